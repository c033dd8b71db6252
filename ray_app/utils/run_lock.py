"""One run per output folder: a lock beside the folder, held while a run writes it.

`run_lock(folder, what)` is a context manager. The lock is `.<folder name>.lock.json` in the folder's
parent (beside it, not in it, so `--fresh-run` can delete the folder while holding its lock). It
names its holder (host, pid, user, command line, started_at), and a heartbeat thread refreshes it
every 10 s. A second run into the same folder stops with `RunLocked` (a StorageError: `cli.run`
prints it and exits 2) naming the first. A lock without a heartbeat for 60 s (its run died with the
node) is taken over with a message; on the same host a lock whose process is gone is taken over at once.

How the lock is taken depends on the storage:
- local folders and NFS: the lock file is created with O_CREAT | O_EXCL; the heartbeat sets its mtime.
- s3://: a lease object created with a conditional write (`PutObject` with If-None-Match: *), refreshed
  and taken over with If-Match on its ETag, so two runs never both hold it. Its age is the server's
  Date minus its LastModified (no clock skew between nodes).
- other URIs (gs://, ...): a lease object written, then read back after a second (whoever's token is
  there holds it): weaker than a conditional write, enough to stop runs started seconds apart.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import json
import os
import secrets
import socket
import sys
import threading
import time
from typing import Iterator

from ray_app import storage

STALE_S = 60.0
HEARTBEAT_S = 10.0


class RunLocked(storage.StorageError):
    """Another run holds this output folder; the message names it and what to do."""


def lock_path(folder: str) -> str:
    folder = storage.normalize(folder)
    return storage.join(storage.parent(folder), f".{storage.basename(folder)}.lock.json")


def _holder(what: str) -> dict:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    now = time.time()
    return {"what": what, "host": socket.gethostname(), "pid": os.getpid(), "user": user,
            "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "started_at": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(timespec="seconds"),
            "heartbeat_at": now, "token": secrets.token_hex(8)}


def describe(holder: dict | None) -> str:
    if not holder:
        return "a run whose lock file is being written or unreadable"
    return (f"pid {holder.get('pid')} on {holder.get('host')} (user {holder.get('user')}, started {holder.get('started_at')}): "
            f"{holder.get('command')}")


def _locked_error(folder: str, what: str, lock: str, holder: dict | None, age: float, stale_s: float) -> RunLocked:
    return RunLocked(
        f"{what} {folder} is in use by another run: {describe(holder)} (lock {lock}, last heartbeat {age:.0f}s ago). "
        f"Wait for it to finish or stop it, or write elsewhere (another --run-name or --out-dir); a lock without "
        f"a heartbeat for {stale_s:.0f}s is taken over automatically"
    )


def _process_gone(holder: dict | None) -> bool:
    """The holder ran on this host and its process no longer exists."""
    if not holder or holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _LocalLease:
    def __init__(self, path: str):
        self.path = path

    def _read(self) -> tuple[dict, float] | None:
        """(holder, seconds since the last heartbeat); None when there is no lock."""
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = {}  # being written (or damaged): judged by its age like any other
        return (holder if isinstance(holder, dict) else {}), age

    def acquire(self, me: dict, stale_s: float, error, log) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                found = self._read()
                if found is None:
                    continue  # released meanwhile
                holder, age = found
                if age <= stale_s and not _process_gone(holder):
                    raise error(holder, age)
                # Stale: move it aside (one contender wins the rename), check it is the one judged stale.
                aside = f"{self.path}.stale-{me['token']}"
                try:
                    os.rename(self.path, aside)
                except FileNotFoundError:
                    continue
                try:
                    with open(aside, encoding="utf-8") as f:
                        moved = json.loads(f.read() or "{}")
                except ValueError:
                    moved = {}
                if moved.get("token") != holder.get("token"):
                    with contextlib.suppress(FileExistsError):
                        os.link(aside, self.path)  # a fresh lock taken meanwhile: put it back
                else:
                    log(f"[lock] taking over the stale lock {self.path} of {describe(holder)} (no heartbeat for {age:.0f}s)")
                os.unlink(aside)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(me, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            return

    def refresh(self, me: dict) -> bool:
        found = self._read()
        if not found or found[0].get("token") != me["token"]:
            return False
        os.utime(self.path)
        return True

    def release(self, me: dict) -> None:
        found = self._read()
        if found and found[0].get("token") == me["token"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class _S3Lease:
    def __init__(self, uri: str):
        import boto3

        bucket_key = uri.split("://", 1)[1]
        self.bucket, self.key = bucket_key.split("/", 1)
        self.client = boto3.client("s3")  # endpoint and credentials: the standard AWS_* environment
        self.etag: str | None = None

    @staticmethod
    def _code(e) -> str:
        return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))

    def _put(self, me: dict, **condition) -> str:
        body = json.dumps({**me, "heartbeat_at": time.time()}, indent=2).encode()
        return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, ContentType="application/json", **condition)["ETag"]

    def acquire(self, me: dict, stale_s: float, error, log) -> None:
        from botocore.exceptions import ClientError

        while True:
            try:
                self.etag = self._put(me, IfNoneMatch="*")
                return
            except ClientError as e:
                if self._code(e) not in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    raise
            try:
                got = self.client.get_object(Bucket=self.bucket, Key=self.key)
            except ClientError as e:
                if self._code(e) in ("NoSuchKey", "404"):
                    continue  # released meanwhile
                raise
            try:
                holder = json.loads(got["Body"].read())
            except ValueError:
                holder = None
            server_now = _http_date(got["ResponseMetadata"]["HTTPHeaders"].get("date")) or time.time()
            age = max(0.0, server_now - got["LastModified"].timestamp())
            if age <= stale_s and not _process_gone(holder):
                raise error(holder, age)
            try:
                self.etag = self._put(me, IfMatch=got["ETag"])  # only if nobody refreshed or took it meanwhile
            except ClientError as e:
                if self._code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409", "404"):
                    continue
                raise
            log(f"[lock] took over the stale lock s3://{self.bucket}/{self.key} of {describe(holder)} (no heartbeat for {age:.0f}s)")
            return

    def refresh(self, me: dict) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.etag = self._put(me, IfMatch=self.etag)
            return True
        except ClientError as e:
            if self._code(e) in ("PreconditionFailed", "NoSuchKey", "412", "404"):
                return False
            raise

    def release(self, me: dict) -> None:
        from botocore.exceptions import ClientError

        with contextlib.suppress(ClientError):
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)


class _ObjectLease:
    """Object stores without conditional writes through pyarrow (gs://, ...): write, wait, read back."""

    SETTLE_S = 1.0

    def __init__(self, uri: str):
        self.uri = uri

    def _read(self) -> dict | None:
        try:
            return storage.read_json(self.uri)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def acquire(self, me: dict, stale_s: float, error, log) -> None:
        holder = self._read()
        if holder is not None:
            age = time.time() - float(holder.get("heartbeat_at") or 0)
            if age <= stale_s and not _process_gone(holder):
                raise error(holder, age)
            log(f"[lock] taking over the stale lock {self.uri} of {describe(holder)} (no heartbeat for {age:.0f}s)")
        storage.write_json(self.uri, {**me, "heartbeat_at": time.time()})
        time.sleep(self.SETTLE_S)
        now = self._read()
        if not now or now.get("token") != me["token"]:
            raise error(now, 0.0)

    def refresh(self, me: dict) -> bool:
        now = self._read()
        if not now or now.get("token") != me["token"]:
            return False
        storage.write_json(self.uri, {**me, "heartbeat_at": time.time()})
        return True

    def release(self, me: dict) -> None:
        now = self._read()
        if now and now.get("token") == me["token"]:
            storage.delete(self.uri, storage.parent(self.uri))


def _http_date(text: str | None) -> float | None:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(text).timestamp() if text else None
    except (TypeError, ValueError):
        return None


def _lease(path: str):
    if not storage.is_uri(path):
        return _LocalLease(path)
    if path.startswith("s3://"):
        try:
            return _S3Lease(path)
        except ImportError:
            raise storage.StorageError("run locks on s3:// need boto3: pip install boto3") from None
    return _ObjectLease(path)


def _heartbeat(lease, me: dict, stop: threading.Event, every: float, where: str, log) -> None:
    while not stop.wait(every):
        try:
            if not lease.refresh(me):
                log(f"[lock] WARNING: lost the lock {where}: another run took it over (this run's heartbeat "
                    "stalled past the stale limit); this run and that one may now write the same folder")
                return
        except Exception as e:  # a transient storage error: try again at the next beat
            log(f"[lock] heartbeat of {where} failed ({type(e).__name__}: {e}); retrying")


@contextlib.contextmanager
def run_lock(folder: str, what: str, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S, log=print) -> Iterator[str]:
    """Hold the lock of `folder` (see the module docstring) for the body; yields the lock's path.

    `what` names the folder in messages ("SFT run 'x'", "samples folder"). Raises RunLocked, before
    the body runs, when another live run holds it. Released when the body ends, however it ends.
    """
    where = lock_path(folder)
    lease = _lease(where)
    me = _holder(what)
    lease.acquire(me, stale_s, lambda holder, age: _locked_error(folder, what, where, holder, age, stale_s), log)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(lease, me, stop, heartbeat_s, where, log), daemon=True,
                            name=f"run-lock-heartbeat {storage.basename(folder)}")
    beat.start()
    try:
        yield where
    finally:
        stop.set()
        beat.join(timeout=heartbeat_s + 30)
        lease.release(me)
