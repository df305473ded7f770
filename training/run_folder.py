"""One run per folder, and run folders that describe themselves.

A run folder (`--model_dir`) holds, besides checkpoints:
  run.lock       who runs here now: pid, host, process start time, start date, command line
  config.json    the model config (`GroupBertConfig` JSON)
  settings.json  the resolved settings: {"settings": {...}, "flags": {...}} (flags: the CLI's)

The lock stops two runs from interleaving their checkpoints in one folder. A lock whose
process is gone (a crash, SIGKILL) is stale and taken over with a warning; the owner is
checked by pid and by the process start time, so a reused pid does not look alive. A lock
from another host cannot be checked from here: the run refuses and says which file to
delete if that run is dead. The records let resume, export and fine-tuning read the config
instead of asking for `--config` again, and let a resume refuse changed settings by name.
"""

import datetime
import fcntl
import json
import os
import socket
import sys
import tempfile
from typing import Any, Dict, Iterable, List, Optional

from absl import logging

from groupbert_tf.config import GroupBertConfig

LOCK = "run.lock"
CONFIG = "config.json"
SETTINGS = "settings.json"


class RunFolderError(ValueError):
    """The run folder is busy, unwritable, or its records conflict with this run."""


def _process_start_time(pid):
    """The kernel's start time of `pid` (clock ticks since boot), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            # The command name (field 2) may hold spaces and parentheses: split after it.
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid, start_time):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Someone else's live process.
        return True
    return start_time is None or _process_start_time(pid) in (None, start_time)


def _write_json_atomically(path, value):
    folder = os.path.dirname(path) or "."
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp",
                                     encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(f.name, path)


def _read_json(path):
    """The JSON in `path`; None if the file is absent; an error naming it if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise RunFolderError(f"{path} cannot be read: {error}") from None


class RunLock:
    """`with RunLock(model_dir):` holds `<model_dir>/run.lock` for the block.

    Re-entrant within one process (the CLI and the trainer may both take it). Raises
    RunFolderError at once if another live process holds the folder.
    """

    _held: Dict[str, int] = {}  # lock path -> depth, for this process

    def __init__(self, model_dir, flag="--model_dir"):
        self.model_dir = model_dir
        self.flag = flag
        self.path = os.path.abspath(os.path.join(model_dir, LOCK))

    def _refuse(self, holder):
        started = holder.get("started", "?")
        command = holder.get("command", "?")
        if holder.get("host") != socket.gethostname():
            raise RunFolderError(
                f"{self.flag} {self.model_dir} is locked by pid {holder.get('pid')} on host "
                f"{holder.get('host')!r} (started {started}: {command}); this host cannot "
                f"check whether it still runs. If it does not, delete {self.path}")
        raise RunFolderError(
            f"{self.flag} {self.model_dir} is in use by another run: pid {holder.get('pid')} "
            f"(started {started}: {command}). Wait for it to end or choose another "
            f"{self.flag}")

    def acquire(self):
        if self.path in RunLock._held:
            RunLock._held[self.path] += 1
            return self
        check_writable(self.model_dir, self.flag)
        # flock on the folder serialises the check-and-write of concurrent starters.
        folder = os.open(os.path.dirname(self.path), os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            try:
                holder = _read_json(self.path)
                if holder is not None and not isinstance(holder, dict):
                    raise RunFolderError(f"{self.path}: not a JSON object")
            except RunFolderError as error:  # Damaged on disk (it is written atomically).
                logging.warning("Taking over %s, which cannot be read: %s", self.path, error)
                holder = None
            if holder is not None:
                pid = holder.get("pid")
                same_host = holder.get("host") == socket.gethostname()
                if not same_host or (isinstance(pid, int)
                                     and _alive(pid, holder.get("pid_start_time"))):
                    self._refuse(holder)
                logging.warning("Taking over %s: its run (pid %s, started %s) is no longer "
                                "running.", self.path, pid, holder.get("started", "?"))
            _write_json_atomically(self.path, {
                "pid": os.getpid(), "host": socket.gethostname(),
                "pid_start_time": _process_start_time(os.getpid()),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                "command": " ".join(sys.argv),
            })
        finally:
            os.close(folder)
        RunLock._held[self.path] = 1
        return self

    def release(self):
        depth = RunLock._held.get(self.path, 0) - 1
        if depth > 0:
            RunLock._held[self.path] = depth
            return
        RunLock._held.pop(self.path, None)
        try:
            holder = _read_json(self.path)
        except RunFolderError:
            holder = None
        if holder and holder.get("pid") == os.getpid() and (
                holder.get("host") == socket.gethostname()):
            os.remove(self.path)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()


def check_writable(path, flag):
    """Creates `path` if needed and writes a scratch file there, so an unwritable output
    folder fails before training, not after it. Raises RunFolderError naming the flag."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise RunFolderError(f"{flag} {path}: not writable ({error.strerror or error})") from None


# ------------------------------------------------------------------------------------------
# Records
# ------------------------------------------------------------------------------------------

def write_records(model_dir, config: GroupBertConfig, settings: Dict[str, Any],
                  flags: Optional[Dict[str, Any]] = None):
    """Writes config.json and settings.json (atomically: a crash leaves the old ones).
    Without `flags` (a run started from Python), the recorded CLI flags are kept."""
    os.makedirs(model_dir, exist_ok=True)
    if flags is None:
        flags = (read_settings(model_dir) or {}).get("flags")
    _write_json_atomically(os.path.join(model_dir, CONFIG), config.to_dict())
    _write_json_atomically(os.path.join(model_dir, SETTINGS),
                           {"settings": settings, "flags": flags or {}})


def _record_folders(path):
    """Where a config.json may be: the folder itself, and the run folder above a checkpoint
    prefix or a `checkpoints/` or `best/` folder."""
    path = os.path.abspath(path)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    folders = [folder]
    if os.path.basename(folder) in ("checkpoints", "best"):
        folders.append(os.path.dirname(folder))
    return folders


def config_path(path, search_run_folder=False) -> Optional[str]:
    """The config.json of the folder `path`; with `search_run_folder`, also that of the run
    a checkpoint prefix or `checkpoints/`/`best/` folder belongs to. None if there is none."""
    for folder in _record_folders(path) if search_run_folder else [path]:
        if os.path.isfile(os.path.join(folder, CONFIG)):
            return os.path.join(folder, CONFIG)
    return None


def read_config(path, search_run_folder=False) -> Optional[GroupBertConfig]:
    """The recorded config (see `config_path`), or None."""
    found = config_path(path, search_run_folder)
    values = None if found is None else _read_json(found)
    if values is None:
        return None
    try:
        return GroupBertConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise RunFolderError(f"{found}: {error}") from None


def read_settings(model_dir) -> Optional[Dict[str, Any]]:
    """settings.json of a run folder: {"settings": ..., "flags": ...}, or None."""
    record = _read_json(os.path.join(model_dir, SETTINGS))
    if record is not None and not isinstance(record, dict):
        raise RunFolderError(f"{os.path.join(model_dir, SETTINGS)}: expected a JSON object")
    return record


def changes(recorded: Dict[str, Any], new: Dict[str, Any], ignore: Iterable[str] = ()):
    """`field (recorded -> new)` for every field whose value differs, sorted by name."""
    ignore = set(ignore)
    names = sorted((set(recorded) | set(new)) - ignore)
    return [f"{name} ({recorded.get(name)!r} -> {new.get(name)!r})" for name in names
            if recorded.get(name) != new.get(name)]


def config_changes(recorded: GroupBertConfig, new: GroupBertConfig, ignore=()) -> List[str]:
    return changes(recorded.to_dict(), new.to_dict(), ignore)


def check_resume(model_dir, config: GroupBertConfig, settings: Dict[str, Any],
                 refused: Iterable[str], quiet: Iterable[str] = ()):
    """Compares a resumed run with its records; refuses a changed model config or any
    `refused` setting, naming each changed field; logs a warning for other changes."""
    recorded_config = read_config(model_dir)
    record = read_settings(model_dir) or {}
    recorded_settings = record.get("settings") or {}
    refused = set(refused)
    problems = []
    if recorded_config is not None:
        changed = config_changes(recorded_config, config)
        if changed:
            problems.append(f"model config: {', '.join(changed)}")
    if recorded_settings:
        hard = changes({k: v for k, v in recorded_settings.items() if k in refused},
                       {k: v for k, v in settings.items() if k in refused})
        if hard:
            problems.append(f"settings: {', '.join(hard)}")
        soft = changes({k: v for k, v in recorded_settings.items() if k not in refused},
                       {k: v for k, v in settings.items() if k not in refused}, ignore=quiet)
        if soft:
            logging.warning("Resuming %s with changed settings: %s", model_dir, ", ".join(soft))
    if problems:
        raise RunFolderError(
            f"--model_dir {model_dir} holds a run with another {'; '.join(problems)}. Resume "
            "with the recorded values (leave the flags out), or start a new --model_dir "
            "(--init_checkpoint loads the weights only)")


def restore_flags(flag_values, model_dir, names):
    """Sets each flag in `names` that the command line left out to its recorded value, so
    rerunning with only `--model_dir` resumes the same run. Returns the names restored."""
    record = read_settings(model_dir) or {}
    recorded = record.get("flags") or {}
    restored = []
    for name in names:
        if name in recorded and name in flag_values and not flag_values[name].present:
            if flag_values[name].value != recorded[name]:
                flag_values[name].value = recorded[name]
                restored.append(name)
    if restored:
        logging.info("Settings recorded in %s: %s", os.path.join(model_dir, SETTINGS),
                     ", ".join(f"--{n}={recorded[n]!r}" for n in restored))
    return restored
