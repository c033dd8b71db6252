"""Where every output lives: the storage root, paths under it, and reads/writes for folders and URIs.

One root holds the whole study (data/, sft/, eval/, samples/, pipeline/, ...). It is, first found:
`--storage-root`, the environment variable RAY_APP_STORAGE_ROOT, or `~/ray-app-gsm` (like Ray's own
`~/ray_results`). A root is a local folder (NFS on multi-node clusters) or a URI that pyarrow's
filesystems open (`s3://bucket/prefix`, `gs://bucket/prefix`); endpoints and credentials come from
the standard environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... / GOOGLE_APPLICATION_CREDENTIALS).
Ray Train's `storage_path` takes the same URIs, so checkpoints use the same filesystem.

Relative paths in configs and model specs are relative to the root, never to the current directory:
`ray job submit --working-dir .` runs a job in a temporary copy of the checkout, and anything written
there is lost when the job ends.

Remote files are read on a node by copying them into a node-local cache (`local_copy`), so code that
needs a real path (tokenizers, `from_pretrained`, `datasets`) runs unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT_ENV = "RAY_APP_STORAGE_ROOT"
DEFAULT_ROOT = "~/ray-app-gsm"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class StorageError(RuntimeError):
    """A storage root or path that cannot be used; the message names it and what to do."""


def is_uri(path: str | os.PathLike | None) -> bool:
    return path is not None and "://" in str(path)


def cache_root() -> Path:
    """Node-local cache folder (honours XDG_CACHE_HOME): template instances, embedded models, downloads."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "ray_app"


def ephemeral_working_dir(path: str | os.PathLike | None = None) -> str | None:
    """The job's temporary working_dir copy (set up by `ray job submit --working-dir`), or None."""
    resolved = str(Path(path or PROJECT_ROOT).resolve())
    return resolved if f"{os.sep}runtime_resources{os.sep}working_dir_files{os.sep}" in resolved else None


def resolve_root(root: str | None = None) -> str:
    """The storage root as an absolute folder or a URI (see the module docstring for the order)."""
    chosen = root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    if is_uri(chosen):
        return chosen.rstrip("/")
    path = Path(chosen).expanduser()
    if not path.is_absolute():
        if ephemeral_working_dir(Path.cwd()):
            raise StorageError(
                f"storage root '{chosen}' is relative, and this job runs in a temporary copy of the working dir "
                f"({Path.cwd()}): outputs would be lost. Use an absolute path, a shared folder or an s3:// / gs:// URI"
            )
        path = Path.cwd() / path
    return str(path.resolve())


def join(base: str, *parts: str) -> str:
    """Path join that keeps URIs intact (`Path('s3://b/x')` would collapse the '//')."""
    parts = tuple(str(p).strip("/") for p in parts if p)
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


def under_root(root: str, path: str | None) -> str | None:
    """A config path made absolute: URIs and absolute paths as given, relative ones under the root."""
    if path is None or path == "":
        return path
    if is_uri(path):
        return path.rstrip("/")
    expanded = os.path.expanduser(path)
    return expanded if os.path.isabs(expanded) else join(root, path)


def basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def parent(path: str) -> str:
    if is_uri(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return str(Path(path).parent)


# ----------------------------------------------------------------------------------------------
# Filesystems
# ----------------------------------------------------------------------------------------------


def filesystem(path: str):
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs as pafs

    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(path)
        except Exception as e:  # unknown scheme, bad URI
            raise StorageError(f"cannot open storage URI '{path}': {e}") from None
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def _info(path: str):
    fs, inner = filesystem(path)
    return fs, inner, fs.get_file_info(inner)


def exists(path: str) -> bool:
    if not is_uri(path):
        return Path(path).expanduser().exists()
    import pyarrow.fs as pafs

    return _info(path)[2].type != pafs.FileType.NotFound


def is_file(path: str) -> bool:
    if not is_uri(path):
        return Path(path).expanduser().is_file()
    import pyarrow.fs as pafs

    return _info(path)[2].type == pafs.FileType.File


def is_dir(path: str) -> bool:
    if not is_uri(path):
        return Path(path).expanduser().is_dir()
    import pyarrow.fs as pafs

    fs, inner, info = _info(path)
    if info.type == pafs.FileType.Directory:
        return True
    # Object stores have no folders: a prefix with objects under it is one.
    return info.type == pafs.FileType.NotFound and bool(fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True)))


def list_files(path: str, suffix: str = "", recursive: bool = False) -> list[str]:
    """Files under a folder (full paths/URIs, sorted); [] when it does not exist."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=recursive, allow_not_found=True))
    out = []
    for info in infos:
        if info.type == pafs.FileType.File and info.base_name.endswith(suffix) and not info.base_name.startswith("."):
            rel = info.path[len(inner):].lstrip("/")
            out.append(join(path, rel))
    return sorted(out)


def read_bytes(path: str) -> bytes:
    if not is_uri(path):
        return Path(path).expanduser().read_bytes()
    fs, inner = filesystem(path)
    try:
        with fs.open_input_stream(inner) as f:
            return f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def write_bytes(path: str, data: bytes) -> None:
    """Whole-file write: a local file is replaced atomically; an object appears only once complete."""
    if not is_uri(path):
        from ray_app.utils.io import atomic_open

        with atomic_open(Path(path).expanduser(), "wb") as f:
            f.write(data)
        return
    fs, inner = filesystem(path)
    with fs.open_output_stream(inner) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    from ray_app.utils.io import dumps_json

    write_text(path, dumps_json(obj))


def write_jsonl(path: str, rows) -> None:
    """One JSON object per line, in the project's row format (`utils.io.dumps_row`)."""
    from ray_app.utils.io import dumps_jsonl

    write_text(path, dumps_jsonl(rows))


def delete(path: str) -> None:
    """Remove a file or a whole folder/prefix; nothing happens when it is not there."""
    if not is_uri(path):
        p = Path(path).expanduser()
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        return
    import pyarrow.fs as pafs

    fs, inner, info = _info(path)
    if info.type == pafs.FileType.File:
        fs.delete_file(inner)
    elif info.type == pafs.FileType.Directory or is_dir(path):
        fs.delete_dir(inner)


def upload_dir(local_dir: str | os.PathLike, dest: str) -> None:
    """Copy a local folder to `dest` (folder or URI), replacing what was there."""
    local_dir = Path(local_dir)
    if not is_uri(dest):
        dest_path = Path(dest).expanduser()
        tmp = dest_path.with_name(f".{dest_path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(local_dir, tmp)
        shutil.rmtree(dest_path, ignore_errors=True)
        os.replace(tmp, dest_path)
        return
    import pyarrow.fs as pafs

    delete(dest)
    fs, inner = filesystem(dest)
    pafs.copy_files(str(local_dir.resolve()), inner, destination_filesystem=fs)


def upload_file(local_file: str | os.PathLike, dest: str) -> None:
    write_bytes(dest, Path(local_file).read_bytes())


def copy(src: str, dest: str) -> None:
    """Copy one file between any two locations."""
    write_bytes(dest, read_bytes(src))


def _listing_key(path: str) -> str:
    """What identifies the current content of a remote file or folder: names, sizes, mtimes."""
    import pyarrow.fs as pafs

    fs, inner, info = _info(path)
    if info.type == pafs.FileType.File:
        infos = [info]
    else:
        infos = [i for i in fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
                 if i.type == pafs.FileType.File]
    if not infos:
        raise FileNotFoundError(f"{path}: not found")
    return hashlib.sha256(json.dumps(sorted((i.path, i.size, str(i.mtime)) for i in infos)).encode()).hexdigest()


def local_copy(path: str) -> Path:
    """A local path with the content of `path`: itself when local, else a node-local cached download."""
    if not is_uri(path):
        return Path(path).expanduser()
    from filelock import FileLock

    import pyarrow.fs as pafs

    key = _listing_key(path)
    target = cache_root() / "storage" / f"{hashlib.sha256(path.encode()).hexdigest()[:16]}-{basename(path)}"
    stamp = target.with_name(target.name + ".key")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if stamp.is_file() and stamp.read_text() == key and target.exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            fs, inner, info = _info(path)
            if info.type == pafs.FileType.File:
                pafs.copy_files(inner, str(tmp / "file"), source_filesystem=fs)
                src = tmp / "file"
            else:
                src = tmp / "dir"
                # The local side needs its folders made first (S3 has none to copy).
                for info in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
                    if info.type == pafs.FileType.File:
                        (src / info.path[len(inner):].lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                pafs.copy_files(inner, str(src), source_filesystem=fs)
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            os.replace(src, target)
            stamp.write_text(key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------------------------
# Checks made at job start
# ----------------------------------------------------------------------------------------------


def check_root(root: str) -> None:
    """Stop at start, not after training, when the root cannot be written: missing bucket, bad
    credentials, unreachable endpoint, read-only folder. The error names the root."""
    probe = join(root, f".ray_app_probe-{os.getpid()}-{time.time_ns()}")
    if is_uri(root):
        import pyarrow.fs as pafs

        scheme, _, rest = root.partition("://")
        bucket = rest.split("/", 1)[0]
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        where = f" (endpoint {endpoint})" if endpoint and scheme == "s3" else ""
        try:
            fs, _ = filesystem(root)
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise StorageError(
                    f"storage root {root}: bucket '{bucket}' does not exist{where}; create it or pass another --storage-root"
                )
            write_bytes(probe, b"ok")
            delete(probe)
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(f"storage root {root} cannot be written{where}: {type(e).__name__}: {e}") from None
        return
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        write_bytes(probe, b"ok")
        delete(probe)
    except OSError as e:
        raise StorageError(f"storage root {root} cannot be written: {e}; pass another --storage-root") from None


def describe_root(root: str) -> str:
    """One line for the job log: where outputs go and what that means on a cluster."""
    if is_uri(root):
        return f"[storage] root: {root}"
    note = ""
    if ephemeral_working_dir():
        note = " (a folder on the node that runs the driver; on several nodes use shared storage: NFS or s3:// / gs://)"
    return f"[storage] root: {root}{note}"
