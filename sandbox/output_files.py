"""What a run or a cell leaves in the working folder, collected for its report: images by content, other files."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from collections.abc import Iterator
from typing import Any

from contract import IMAGE_EXTENSIONS, SAVED_FIGURES, UNSAFE_PATH_CHARACTERS, check_path
from job_request import Job
from workspace_folders import file_kind, open_folder, open_workspace, pass_folder

MAX_SVG_PROLOGUE_ITEMS = 64  # declarations, comments, doctypes before an SVG's <svg>
# Images: only files with these extensions are looked at, and each must be what its first bytes
# say it is; the MIME type sent is the content's, never the name's. A row's (offset, bytes) all match.
IMAGE_MAGIC: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    ("image/png", ((0, b"\x89PNG\r\n\x1a\n"),)),
    ("image/jpeg", ((0, b"\xff\xd8\xff"),)),
    ("image/gif", ((0, b"GIF87a"),)),
    ("image/gif", ((0, b"GIF89a"),)),
    ("image/webp", ((0, b"RIFF"), (8, b"WEBP"))),
)
MAX_SAVED_FIGURES_BYTES = 256 * 1024  # of SAVED_FIGURES, the program's list of its figures in subfolders
SVG_TYPE = "image/svg+xml"  # text, so recognised by its first element (see is_svg)
IMAGE_FORMATS = "PNG, JPEG, GIF, WEBP or SVG"
MAX_NAME_BYTES = 255  # of a reported file's path from the working folder
MAX_SHOWN_NAME = 200  # characters of a skipped file's name shown in the report
MAX_SKIPPED_LISTED = 50  # a program can make thousands of files: the report lists this many, then counts
MAX_WALKED_ENTRIES = 2000  # entries a run's subfolders are searched through for its files (a tree can be endless)
MAX_WALK_DEPTH = 8  # folders below the working folder searched


def image_type(data: bytes) -> str | None:
    """The MIME type of an image by its content (see IMAGE_MAGIC, is_svg), or None."""
    for mime, signature in IMAGE_MAGIC:
        if all(data.startswith(magic, offset) for offset, magic in signature):
            return mime
    return SVG_TYPE if is_svg(data) else None


def is_svg(data: bytes) -> bool:
    """Whether the text starts with an <svg> element, after what XML allows first: a BOM, white space,
    an XML declaration, processing instructions, comments, a doctype (with its internal subset)."""
    position = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    # (opening, closing) of what may come first; each is passed whole, so this is linear in the text,
    # and a real prologue has a few of them: a million empty doctypes is not a drawing (and would
    # cost a second of the agent's CPU per file).
    prologue = ((b"<?", b"?>"), (b"<!--", b"-->"), (b"<!DOCTYPE", b">"))
    for _ in range(MAX_SVG_PROLOGUE_ITEMS + 1):
        while data[position:position + 1] in (b" ", b"\t", b"\r", b"\n"):
            position += 1
        if data.startswith(b"<svg", position):
            return data[position + 4:position + 5] in (b" ", b"\t", b"\r", b"\n", b">", b"/")
        for opening, closing in prologue:
            if data.startswith(opening, position):
                end = position + len(opening)
                if opening == b"<!DOCTYPE":
                    # '[' is looked for only up to the next '>': searching the whole rest of the text
                    # for every doctype made "<!DOCTYPE>" repeated a million times quadratic.
                    subset = data.find(b"[", end, max(data.find(b">", end), end))
                    if subset != -1:
                        end = data.find(b"]", subset)  # its declarations hold '>' of their own
                        if end == -1:
                            return False
                end = data.find(closing, end)
                if end == -1:
                    return False
                position = end + len(closing)
                break
        else:
            return False
    return False


def shown_name(raw: bytes) -> str:
    """A file name as the report can show it whatever its bytes: undecodable bytes and unsafe characters escaped."""
    text = raw.decode("utf-8", "backslashreplace")
    text = UNSAFE_PATH_CHARACTERS.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)
    return text if len(text) <= MAX_SHOWN_NAME else text[:MAX_SHOWN_NAME] + "…"


def name_problem(raw: bytes, seen: dict[str, str]) -> str | None:
    """Why a file name cannot be an image's name in the report, or None when it can.

    `seen` maps the NFC form of each good name so far to that name: two names that only differ in
    how an accented letter is encoded look the same to people, and to some file systems.
    """
    if len(raw) > MAX_NAME_BYTES:
        return f"the name is over {MAX_NAME_BYTES} bytes"
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "the name is not valid UTF-8"
    unsafe = UNSAFE_PATH_CHARACTERS.search(name)
    if unsafe is not None:
        if "\u202a" <= unsafe[0] <= "\u202e" or "\u2066" <= unsafe[0] <= "\u2069":
            return "the name has a bidirectional text control character"
        return "the name has a control character"
    normal = name
    if not name.isascii():  # NFC changes nothing in ASCII: unicodedata is imported only when needed
        import unicodedata

        normal = unicodedata.normalize("NFC", name)
    if normal in seen:
        return f"the same name as {seen[normal]} once Unicode-normalised (NFC)"
    seen[normal] = name
    return None


def natural_key(name: str) -> list[str | int]:
    """Sort key: digit runs compare as numbers, so figure_2 comes before figure_10."""
    # re.split with a group alternates text and digits, so like is always compared with like.
    return [int(part) if index % 2 else part for index, part in enumerate(re.split("([0-9]+)", name))]


class Skipped:
    """Files left out of the report and why; the list is capped, the rest counted."""

    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []
        self.unlisted = 0

    def add(self, name: str, reason: str) -> None:
        """One more file left out (name: as shown_name gives it)."""
        if len(self.entries) < MAX_SKIPPED_LISTED:
            self.entries.append({"name": name, "reason": reason})
        else:
            self.unlisted += 1

    def report(self) -> list[dict[str, str]]:
        """The report's `skipped`: {"name", "reason"} each."""
        if not self.unlisted:
            return self.entries
        return [*self.entries, {"name": "…", "reason": f"{self.unlisted} more skipped files are not listed"}]


Snapshot = dict[bytes, tuple[int, int, int]]


def fingerprint(info: os.stat_result) -> tuple[int, int, int]:
    """What tells a file changed (or replaced) since a snapshot: (mtime_ns, size, inode)."""
    return info.st_mtime_ns, info.st_size, info.st_ino


def is_cache_folder(raw: bytes) -> bool:
    """A folder tools keep their caches in (hidden ones, __pycache__), not searched for a run's files."""
    return raw.startswith(b".") or raw == b"__pycache__"


def files_below(dir_fd: int, skipped: Skipped | None = None) -> Iterator[tuple[bytes, os.stat_result]]:
    """(path, stat) of each entry other than a folder in the working folder's subfolders, depth first.

    At most MAX_WALKED_ENTRIES entries and MAX_WALK_DEPTH folders deep: a program can make an endless
    tree. What is left out is said in `skipped`, when given. Folders are opened one by one without
    following a symbolic link, and tools' cache folders (see is_cache_folder) are passed over.
    """
    walked = 0

    def folder(fd: int, prefix: bytes, depth: int) -> Iterator[tuple[bytes, os.stat_result]]:
        nonlocal walked
        with os.scandir(fd) as entries:
            for entry in entries:
                try:  # the top's files are list_candidates' (no stat: the type comes with the entry)
                    if not depth and not entry.is_dir(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                walked += 1
                if walked > MAX_WALKED_ENTRIES:
                    if skipped is not None and walked == MAX_WALKED_ENTRIES + 1:
                        skipped.add(shown_name(prefix.rstrip(b"/")) or ".", "not searched further: the subfolders "
                                    f"hold over {MAX_WALKED_ENTRIES} entries")
                    return
                name = os.fsencode(entry.name)
                raw = prefix + name
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError as e:
                    if skipped is not None:
                        skipped.add(shown_name(raw), f"could not be read: {e.strerror}")
                    continue
                if not stat.S_ISDIR(info.st_mode):
                    yield raw, info
                    continue
                if is_cache_folder(name):
                    continue
                if depth >= MAX_WALK_DEPTH:
                    if skipped is not None:
                        skipped.add(shown_name(raw), f"not searched: over {MAX_WALK_DEPTH} folders deep")
                    continue
                try:
                    below = open_folder(entry.name, fd)
                except OSError as e:
                    if skipped is not None:
                        skipped.add(shown_name(raw), f"could not be read: {e.strerror}")
                    continue
                try:
                    yield from folder(below, raw + b"/", depth + 1)
                finally:
                    os.close(below)

    yield from folder(dir_fd, b"", 0)


def workspace_snapshot(deep: bool = False) -> Snapshot | None:
    """path -> (mtime_ns, size, inode) of each entry at the top of the working folder (and, `deep`, of the
    files in its subfolders, as files_below finds them); None when unreadable.

    Taken before a program (or cell) starts, so that what it did not make or change is not collected.
    """
    try:
        dir_fd = open_workspace()
    except OSError:
        return None
    try:
        snapshot = {}
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                snapshot[os.fsencode(entry.name)] = fingerprint(info)
        if deep:
            snapshot.update((raw, fingerprint(info)) for raw, info in files_below(dir_fd))
        return snapshot
    except OSError:
        return None
    finally:
        os.close(dir_fd)


def unchanged(raw: bytes, info: os.stat_result, before: Snapshot | None) -> bool:
    """The file is as it was in `before`: an input file, or one an earlier cell made."""
    return before is not None and before.get(raw) == fingerprint(info)


class Candidate:
    """A file of the working folder that may be reported: an image (by its extension) or another file.
    `raw` is its path from the working folder (a name, or folders and a name)."""

    def __init__(self, raw: bytes, info: os.stat_result, is_image: bool) -> None:
        self.raw, self.info, self.is_image = raw, info, is_image
        self.shown = shown_name(raw)
        # In the order the files were made; files of the same clock tick in their names' natural order.
        self.sort_key = (info.st_mtime_ns, natural_key(self.shown), raw)


def has_image_extension(raw: bytes) -> bool:
    """The name ends in an image's extension (what makes a file a candidate image)."""
    return os.path.splitext(raw)[1].lower().decode("latin-1") in IMAGE_EXTENSIONS


def list_candidates(dir_fd: int, skipped: Skipped, before: Snapshot | None, with_files: bool) -> list[Candidate]:
    """The folder's files to look at: those with an image extension, and the others when `with_files`
    (folders aside); none left as they were in `before`. Never followed through a symlink."""
    candidates = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            # Names are the program's bytes: scandir decodes them with surrogateescape, which
            # fsencode undoes exactly, so nothing here depends on them being UTF-8.
            raw = os.fsencode(entry.name)
            is_image = has_image_extension(raw)
            if not is_image and not with_files:
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as e:
                skipped.add(shown_name(raw), f"could not be read: {e.strerror}")
                continue
            if unchanged(raw, info, before):
                continue
            if not is_image and stat.S_ISDIR(info.st_mode):
                continue  # a folder the program made is not an output file, nor an error
            candidates.append(Candidate(raw, info, is_image))
    return candidates


def open_below(dir_fd: int, raw: bytes, flags: int) -> int:
    """Open a path of the working folder with `flags`, each folder on the way without following a
    symbolic link (nor the file itself: O_NOFOLLOW is added)."""
    *folders, leaf = raw.split(b"/")
    folder = dir_fd
    try:
        for part in folders:
            next_folder = pass_folder(part, folder)
            if folder != dir_fd:
                os.close(folder)
            folder = next_folder
        return os.open(leaf, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    finally:
        if folder != dir_fd:
            os.close(folder)


def saved_below(dir_fd: int, skipped: Skipped, with_files: bool, limit: int) -> list[Candidate]:
    """The files SAVED_FIGURES lists in subfolders (at most `limit`), as candidates: images, and others when
    `with_files`. A file gone since is left out."""
    try:
        fd = os.open(SAVED_FIGURES, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_SAVED_FIGURES_BYTES + 1) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    try:
        paths = json.loads(data) if len(data) <= MAX_SAVED_FIGURES_BYTES else []
    except ValueError:
        paths = []
    candidates: list[Candidate] = []
    for path in dict.fromkeys(path for path in (paths if isinstance(paths, list) else []) if isinstance(path, str)):
        if len(candidates) >= limit:
            break
        try:
            raw = check_path(path).encode()
        except ValueError:
            continue
        is_image = has_image_extension(raw)
        if b"/" not in raw or not (is_image or with_files):
            continue  # the top of the folder is list_candidates'
        try:
            fd = open_below(dir_fd, raw, os.O_PATH)
        except OSError as e:
            if not isinstance(e, FileNotFoundError):  # removed since: the program's choice, not a failure
                skipped.add(shown_name(raw), f"could not be read: {e.strerror}")
            continue
        try:
            candidates.append(Candidate(raw, os.fstat(fd), is_image))
        finally:
            os.close(fd)
    return candidates


def read_candidate(dir_fd: int, candidate: Candidate, max_bytes: int, budget: int) -> bytes | str:
    """The bytes of a regular file within the size limits (one file's, all files' of its kind); or why not."""
    what = "image" if candidate.is_image else "file"
    size = candidate.info.st_size
    if not stat.S_ISREG(candidate.info.st_mode):
        return f"not a regular file: {file_kind(candidate.info.st_mode)}"
    if size > max_bytes:
        return f"{size} bytes is over the {what} size limit of {max_bytes}"
    if size > budget:
        return f"over the {what}s' total size limit of {2 * max_bytes} bytes"
    try:
        # O_NOFOLLOW (open_below's): a symlink is refused; O_NONBLOCK: a planted FIFO cannot hang us.
        fd = open_below(dir_fd, candidate.raw, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return f"could not be read: {e.strerror}"
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # not what was listed: never read anything but a file
            return f"not a regular file: {file_kind(info.st_mode)}"
        data = f.read(min(max_bytes, budget) + 1)
    if len(data) > min(max_bytes, budget):
        return f"over the {what} size limits"
    return data


class Outputs:
    """What a run left at the top of its working folder for the report: images, other files, and what was skipped."""

    def __init__(self) -> None:
        self.images: list[dict[str, str]] = []
        self.files: list[dict[str, str]] = []
        self.skipped = Skipped()


def collect_outputs(job: Job, before: Snapshot | None = None, with_files: bool = True) -> Outputs:
    """Images (and, `with_files`, other files) made or changed since `before`, in the order they were
    made: at the top of the working folder, the files the program saved figures to in subfolders
    (SAVED_FIGURES), and, `with_files`, every file in its subfolders (named by their path); and what
    was skipped, and why.

    Whatever the program left there (an unreadable folder, FIFOs, unreadable files, names that
    are not text), the result is a report: what cannot be collected is skipped with its reason.
    Images follow max_images and max_image_bytes; other files max_files and max_file_bytes; each
    kind may take twice its per-file limit in all.
    """
    outputs = Outputs()
    skipped = outputs.skipped
    # (count, bytes per file) allowed and bytes left in all, for images (True) and other files (False).
    limits = {True: (int(job.max_images), int(job.max_image_bytes)),
              False: (int(job.max_files), int(job.max_file_bytes))}
    budgets = {is_image: max_bytes * 2 for is_image, (_, max_bytes) in limits.items()}
    try:
        dir_fd = open_workspace()
    except OSError as e:
        # The agent has no CAP_DAC_OVERRIDE: a program can chmod its own folder out of its reach.
        skipped.add(".", f"the working folder could not be read: {e.strerror}")
        return outputs
    try:
        candidates = list_candidates(dir_fd, skipped, before, with_files)
        candidates += saved_below(dir_fd, skipped, with_files, limits[True][0] + limits[False][0])
        candidates.sort(key=lambda candidate: candidate.sort_key)
        if with_files:  # a run's container goes with it: what it left in subfolders comes back too...
            listed = {candidate.raw for candidate in candidates}
            # ...after the files at the top and the saved figures, which the caps serve first (a
            # dataset unpacked into data/ must not crowd out the report or the figures).
            candidates += sorted((Candidate(raw, info, has_image_extension(raw))
                                  for raw, info in files_below(dir_fd, skipped)
                                  if raw not in listed and not unchanged(raw, info, before)),
                                 key=lambda candidate: candidate.sort_key)
        seen: dict[str, str] = {}  # one namespace: an image and a file never share a name
        made: dict[bool, list[tuple[Any, dict[str, str]]]] = {True: [], False: []}  # (sort key, entry) by kind
        for candidate in candidates:
            is_image = candidate.is_image
            found = made[is_image]
            max_count, max_bytes = limits[is_image]
            reason = name_problem(candidate.raw, seen)
            if reason is None and len(found) >= max_count:
                reason = f"more than {max_count} {'images' if is_image else 'files'}"
            if reason is None:
                data = read_candidate(dir_fd, candidate, max_bytes, budgets[is_image])
                mime = image_type(data) if is_image and isinstance(data, bytes) else None
                if isinstance(data, str):
                    reason = data
                elif is_image and mime is None:
                    reason = f"not a {IMAGE_FORMATS} image"
                else:
                    budgets[is_image] -= len(data)
                    entry = {"name": candidate.raw.decode(), "data": base64.b64encode(data).decode()}
                    found.append((candidate.sort_key,
                                  {"name": entry["name"], "mime": mime, "data": entry["data"]} if is_image else entry))
            if reason is not None:
                skipped.add(candidate.shown, reason)
        # Reported in the order they were made, wherever they were found.
        outputs.images = [entry for _, entry in sorted(made[True], key=lambda pair: pair[0])]
        outputs.files = [entry for _, entry in sorted(made[False], key=lambda pair: pair[0])]
    except OSError as e:
        skipped.add(".", f"the working folder could not be read: {e.strerror}")
    finally:
        os.close(dir_fd)
    return outputs
