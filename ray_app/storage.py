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

Outputs are deleted only by `delete(path, root)`, which refuses anything not strictly inside the root.
Folders that others read (exported models, report folders) are written by `publish_dir`: assembled
locally, published whole with a `_COMPLETE.json` marker written last; readers check `is_complete`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ray_app.errors import UserError

ROOT_ENV = "RAY_APP_STORAGE_ROOT"
DEFAULT_ROOT = "~/ray-app-gsm"
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class StorageError(UserError, RuntimeError):
    """A storage root or path that cannot be used; the message names it and what to do.

    The message goes through `redact`: a URI with credentials in it is named without them."""

    def __init__(self, message="", *args):
        super().__init__(redact(str(message)), *args)


class NotFound(StorageError, FileNotFoundError):
    """A file or folder that is not there (still a FileNotFoundError for callers that expect one)."""


def is_uri(path: str | os.PathLike | None) -> bool:
    return path is not None and "://" in str(path)


# Query parameters that carry a credential: presigned S3 / GCS URLs (X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token, X-Goog-Signature, AWSAccessKeyId + Signature), Azure SAS tokens (sig), API keys.
_SECRET_PARAMS = {"sig", "key", "apikey", "api_key", "access_key", "accesskey", "awsaccesskeyid", "pwd", "pass", "auth"}
_SECRET_PARAM_WORDS = ("signature", "token", "secret", "password", "credential")
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
HIDDEN = "***"


def _is_secret_param(name: str) -> bool:
    name = name.lower()
    return name in _SECRET_PARAMS or any(word in name for word in _SECRET_PARAM_WORDS)


def _redact_uri(uri: str) -> str:
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:  # e.g. a malformed IPv6 host: say nothing about it but its scheme
        return f"{uri.partition('://')[0]}://{HIDDEN}"
    netloc, path = parts.netloc, parts.path
    userinfo, at, host = netloc.rpartition("@")
    if not at and "@" in path and ":" in netloc and not netloc.rpartition(":")[2].isdigit():
        # KEY:SECRET@bucket with a raw '/' in the secret (AWS secret keys have them): urlsplit ends the
        # authority at that '/', so the '@' lands in the path.
        _, at, rest = path.partition("@")
        host, slash, tail = rest.partition("/")
        path = slash + tail
    if at:
        netloc = f"{HIDDEN}@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        if any(_is_secret_param(k) for k, _ in pairs):
            query = urllib.parse.urlencode([(k, HIDDEN if _is_secret_param(k) else v) for k, v in pairs], safe="*/:,")
    if (netloc, path, query) == (parts.netloc, parts.path, parts.query):
        return uri  # nothing to hide: exactly as given
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, query, parts.fragment))


def redact(text: str | os.PathLike | None) -> str:
    """`text` (a path, a URI, or a message naming them) with credentials hidden, for logs, errors and
    manifests: the userinfo of a URI (s3://KEY:SECRET@bucket/x, https://user:pw@host/x) and
    credential query parameters (X-Amz-Signature=..., token=..., Azure SAS sig=...) become '***'.
    Paths and URIs without credentials come back unchanged. Prefer credentials from the environment
    or an instance role: a URI with a secret also reaches places we do not control (Ray's own logs)."""
    text = "" if text is None else str(text)
    if "://" not in text:
        return text
    if text.count("://") == 1 and _URI_IN_TEXT.match(text):
        return _redact_uri(text)  # one URI, its path may have spaces
    return _URI_IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match) -> str:
    uri = match.group(0)
    bare = uri.rstrip(".,;:)]}")  # punctuation of the sentence around the URI
    return _redact_uri(bare) + uri[len(bare):]


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
    try:
        if not is_uri(path):
            return Path(path).expanduser().read_bytes()
        fs, inner = filesystem(path)
        with fs.open_input_stream(inner) as f:
            return f.read()
    except FileNotFoundError:
        raise NotFound(f"{path}: not found") from None


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


# ----------------------------------------------------------------------------------------------
# Safe names, paths inside a root, deletes
# ----------------------------------------------------------------------------------------------

PLAIN_NAME_RULE = "letters, digits, '.', '_' and '-' only, not '.' or '..'"


def is_plain_name(name: str | None) -> bool:
    """A name that is one folder or file name and nothing else (run names, model labels)."""
    return bool(name) and re.fullmatch(r"[A-Za-z0-9._-]+", name) is not None and name not in (".", "..")


def normalize(path: str) -> str:
    """A path or URI with '.', '..', repeated and trailing '/' resolved by their text (symlinks are not
    followed here; `is_under` follows them). A URI whose '..' would climb above its bucket is an error."""
    if not path:
        raise StorageError("empty path")
    if not is_uri(path):
        return os.path.normpath(os.path.expanduser(path))
    scheme, _, rest = path.partition("://")
    bucket, _, key = rest.partition("/")
    parts: list[str] = []
    for segment in key.split("/"):
        if segment == "..":
            if not parts:
                raise StorageError(f"'{path}' climbs above its bucket with '..'")
            parts.pop()
        elif segment not in ("", "."):
            parts.append(segment)
    if not bucket or bucket in (".", ".."):
        raise StorageError(f"'{path}' names no bucket")
    return f"{scheme.lower()}://{bucket}" + "".join("/" + p for p in parts)


def _comparable(path: str, follow_last: bool = True) -> str:
    """What `path` really names, for comparing with a root: URIs normalised; local paths absolute with
    symlinks resolved (the last component too, unless `follow_last` is False and it is a link)."""
    if is_uri(path):
        return normalize(path)
    p = os.path.expanduser(path)
    if not os.path.isabs(p):
        raise StorageError(f"'{path}' is a relative path (relative to the current directory, which a job does not own)")
    if not follow_last and os.path.islink(p):
        return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))
    return os.path.realpath(p)


def is_under(path: str | None, root: str | None, follow_last: bool = True) -> bool:
    """True when `path` is strictly inside `root` ('..' and, for local paths, symlinks resolved; URIs
    compared as normalised prefixes ending at a '/'). The root itself is not inside itself."""
    if not path or not root or is_uri(path) != is_uri(root):
        return False
    try:
        p, r = _comparable(str(path), follow_last), _comparable(str(root))
    except StorageError:
        return False
    return p.startswith(r.rstrip("/") + "/") and p != r


def delete(path: str, root: str) -> None:
    """Remove a file or a whole folder/prefix strictly inside `root`; nothing happens when it is not there.

    The one way outputs are deleted. `root` is the storage root (or, for a file a run keeps in its own
    folder, that folder). Refused with a StorageError, before anything is removed: an empty path or
    root, a relative local path, a path that is not strictly inside the root once '..' and symlinks
    are resolved (for URIs: once normalised, with a '/' boundary, so s3://b/root2 is not inside
    s3://b/root), and the root itself. A symlink inside the root is removed, never what it points to.
    """
    if not path or not root:
        raise StorageError(f"refusing to delete {path!r} with storage root {root!r}: an empty path or root names no "
                           "folder; check --storage-root and the option that gave this path")
    if not is_under(path, root, follow_last=False):
        fix = ("Deletes stay inside the root and never remove the root itself: pass a folder inside the root "
               "(a relative --out-dir / --storage-path, a plain --run-name), or a --storage-root that contains it")
        try:
            real = _comparable(str(path), follow_last=False)
        except StorageError as e:
            raise StorageError(f"refusing to delete: {e}. {fix}") from None
        raise StorageError(f"refusing to delete '{path}' (resolves to {real}): it is not strictly inside the storage "
                           f"root '{root}'. {fix}")
    _remove(normalize(path) if is_uri(path) else path)


def _remove(path: str) -> None:
    """Unchecked removal: only for `delete` (checked) and node-local scratch this module made."""
    if not is_uri(path):
        p = Path(path).expanduser()
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
        return
    import pyarrow.fs as pafs

    fs, inner, info = _info(path)
    if info.type == pafs.FileType.File:
        fs.delete_file(inner)
    elif info.type == pafs.FileType.Directory or is_dir(path):
        fs.delete_dir(inner)


# ----------------------------------------------------------------------------------------------
# Atomic folder publishes: a completion marker written last
# ----------------------------------------------------------------------------------------------

MARKER = "_COMPLETE.json"


def _local_files(folder: Path) -> dict[str, dict]:
    """{relative path: {size, sha256}} of every file under a local folder (the marker left out)."""
    from ray_app.utils.io import sha256_file

    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MARKER:
            out[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return out


def _sizes(folder: str) -> dict[str, int]:
    """{relative path: size} of every file under a folder or prefix (one listing on object stores)."""
    import pyarrow.fs as pafs

    fs, inner = filesystem(folder)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    return {i.path[len(inner):].lstrip("/"): i.size for i in infos if i.type == pafs.FileType.File}


def read_marker(folder: str) -> dict | None:
    """The folder's completion marker, or None when it has none (or it cannot be parsed)."""
    try:
        marker = read_json(join(folder, MARKER))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), dict) else None


def incomplete_reason(folder: str, ignore: tuple[str, ...] = ()) -> str | None:
    """None when `folder` was published completely (`publish_dir`): its marker is there and every file
    it lists exists with the listed size. Else why not. `ignore`: files the caller is about to replace."""
    marker = read_marker(folder)
    if marker is None:
        what = "does not exist" if not exists(folder) else f"has no {MARKER}"
        return f"{folder} {what}: it was never published completely (still being written, or interrupted)"
    sizes = _sizes(folder)
    for rel, meta in sorted(marker["files"].items()):
        if rel not in ignore and sizes.get(rel) != meta.get("size"):
            got = "missing" if rel not in sizes else f"{sizes[rel]} bytes, the marker says {meta.get('size')}"
            return f"{folder}/{rel} is {got}: the folder changed after it was published"
    return None


def is_complete(folder: str, ignore: tuple[str, ...] = ()) -> bool:
    return incomplete_reason(folder, ignore) is None


def _check_publish_dest(dest: str, root: str) -> str:
    if not dest or not root:
        raise StorageError(f"cannot publish to {dest!r} with storage root {root!r}: empty path")
    clean = normalize(dest)
    if not is_uri(dest) and not os.path.isabs(clean):
        raise StorageError(f"cannot publish to '{dest}': a relative path (make it absolute or relative to the storage root)")
    if is_uri(dest) and "/" not in clean.split("://", 1)[1]:
        raise StorageError(f"cannot publish to '{dest}': that is a whole bucket; name a folder in it")
    if is_uri(clean) == is_uri(root) and (is_under(root, clean) or _comparable(clean) == _comparable(root)):
        raise StorageError(f"cannot publish to '{dest}': it is the storage root '{root}' or contains it; name a folder inside the root")
    if not is_uri(dest) and os.path.dirname(clean) == clean:
        raise StorageError(f"cannot publish to '{dest}': a filesystem root")
    return clean


def publish_dir(local_dir: str | os.PathLike, dest: str, root: str) -> dict:
    """Publish a locally assembled folder to `dest` (a folder or URI) so that readers never see half of it.

    A completion marker, `_COMPLETE.json` (every file's size and sha256, written_at), is written last;
    readers check it (`is_complete`). Local roots: the files are copied into a hidden sibling folder,
    the marker is written inside it, and it is switched into place by rename; the old version is moved
    aside first and deleted only once the new one is in place. URIs: the old marker is deleted first,
    then the old files it listed, the new files are uploaded, the marker last. Returns the marker.

    A publish owns only what it lists: entries of `dest` that the previous marker does not list
    (coverage/samples/, data_scaling/sft/, a verifier folder inside a coverage folder) are kept (on
    local roots they move into the new folder before the switch). So it deletes nothing but its own
    earlier files and its own temporary folders, bounded by `dest` and its parent, also for a `dest`
    outside the storage root (an absolute --out the user chose). `dest` may not be the root `root` or
    contain it. Files get the umask's permissions (the temporary folders they were made in may not).
    """
    import datetime
    import secrets
    import socket

    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise StorageError(f"cannot publish {local_dir}: not a folder")
    dest = _check_publish_dest(dest, root)
    files = _local_files(local_dir)
    marker = {"files": files, "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "writer": {"host": socket.gethostname(), "pid": os.getpid()}}
    if not is_uri(dest):
        _publish_local(local_dir, Path(dest), marker, secrets.token_hex(4))
    else:
        _publish_uri(local_dir, dest, marker)
    return marker


def _owned(marker: dict | None) -> set[str]:
    """Top-level names of a folder that its marker lists (what the publish that wrote it owns)."""
    return {rel.split("/", 1)[0] for rel in (marker or {}).get("files", {})} | {MARKER}


def _publish_local(local_dir: Path, dest: Path, marker: dict, token: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise StorageError(f"cannot publish to {dest}: it exists and is not a folder; move it away or choose another folder")
    new = dest.parent / f".{dest.name}.publish-{token}"
    aside = dest.parent / f".{dest.name}.old-{token}"
    kept: list[str] = []  # other writers' entries, moved into the new folder
    try:
        new.mkdir()
        for rel in marker["files"]:  # copyfile, not copytree: permissions from the umask, not the temp folder's 0700
            (new / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local_dir / rel, new / rel)
        write_json(str(new / MARKER), marker)  # last: the folder is complete from here on
        if dest.is_dir():
            ours = _owned(read_marker(str(dest))) | {rel.split("/", 1)[0] for rel in marker["files"]}
            for entry in sorted(os.listdir(dest)):
                if entry not in ours:
                    os.rename(dest / entry, new / entry)
                    kept.append(entry)
            os.rename(dest, aside)
        os.rename(new, dest)
    except BaseException:
        if aside.is_dir() and not dest.exists():
            os.rename(aside, dest)  # the switch failed halfway: the old version goes back
        for entry in kept:
            if (new / entry).exists() and dest.is_dir():
                os.rename(new / entry, dest / entry)
        raise
    finally:
        for leftover in (new, aside):  # our copies, or the old version's own files: never other writers'
            if leftover == new and any((new / entry).exists() for entry in kept):
                continue  # could not move them back (a concurrent publish moved the folder): keep, never delete
            if leftover.exists():
                delete(str(leftover), str(dest.parent))


def _publish_uri(local_dir: Path, dest: str, marker: dict) -> None:
    import pyarrow.fs as pafs

    old = read_marker(dest)
    delete(join(dest, MARKER), dest)  # first: from here on readers see an incomplete folder
    for rel in sorted((old or {}).get("files", {})):
        if rel not in marker["files"]:
            delete(join(dest, rel), dest)
    fs, inner = filesystem(dest)
    for rel in marker["files"]:
        pafs.copy_files(str((local_dir / rel).resolve()), f"{inner}/{rel}", destination_filesystem=fs)
    write_json(join(dest, MARKER), marker)  # last


def require_complete(folder: str, what: str, fix: str, ignore: tuple[str, ...] = ()) -> None:
    """Raise a StorageError naming `folder` unless it was published completely."""
    reason = incomplete_reason(folder, ignore)
    if reason:
        raise StorageError(f"{what} {folder} is not complete: {reason}. {fix}")


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
        raise NotFound(f"{path}: not found")
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
            delete(probe, root)
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(f"storage root {root} cannot be written{where}: {type(e).__name__}: {e}") from None
        return
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        write_bytes(probe, b"ok")
        delete(probe, root)
    except OSError as e:
        raise StorageError(f"storage root {root} cannot be written: {e}; pass another --storage-root") from None


def describe_root(root: str) -> str:
    """One line for the job log: where outputs go and what that means on a cluster."""
    if is_uri(root):
        return f"[storage] root: {redact(root)}"
    note = ""
    if ephemeral_working_dir():
        note = " (a folder on the node that runs the driver; on several nodes use shared storage: NFS or s3:// / gs://)"
    return f"[storage] root: {root}{note}"
