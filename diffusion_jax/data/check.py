"""Image folders checked up front: every file decoded once, as the training loader decodes it.

    from diffusion_jax.data import check
    report = check.check_folder("photos/", image_size=64)  # threads, a progress bar
    print(check.format_report(report))  # counts, size range, files that fail or are small
    report.unreadable                   # (("cats/x.png", "OSError: image file is truncated"), ...)
    source = check.checked_source(ImageFolderSource("photos/"), image_size=64, skip_unreadable=True)

`checked_source` is how the pipeline opens a folder dataset: the first call in a process checks
every file, later calls with the same file list reuse the result, so training decodes the folder
once before compiling, not per epoch (grain's workers receive the checked source by pickle).
Decoding runs on a thread pool: PIL releases the GIL while it decodes.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import shlex
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from diffusion_jax.data.sources import ImageDecodeError, ImageFolderSource, load_rgb

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FolderReport:
    """What `check_files` found. File names are relative to `root`; sizes are (height, width)."""

    root: str
    num_files: int
    image_size: int  # the training size the images were compared with; 0: none
    unreadable: tuple[tuple[str, str], ...]  # (file, why it does not decode)
    small: tuple[tuple[str, tuple[int, int]], ...]  # min(H, W) < image_size: would be upscaled
    min_size: tuple[int, int]  # the smallest height and the smallest width; (0, 0): none decodes
    max_size: tuple[int, int]

    @property
    def smallest(self) -> tuple[int, int]:
        """The size of the small image with the shortest side."""
        return min((size for _, size in self.small), key=min)


def _decoded_size(path: str) -> tuple[int, int] | str:
    """(height, width) of the decoded image, or why it does not decode."""
    try:
        height, width, _ = load_rgb(path).shape
    except ImageDecodeError as e:
        cause = e.__cause__ or e
        return f"{type(cause).__name__}: {cause}"
    return height, width


def _decoded_sizes(paths: list[str], workers: int, progress: bool) -> list:
    """`_decoded_size` of each path, in order. At most 4 * workers files are in flight, so a
    million files need no million futures."""
    from tqdm.auto import tqdm

    results, pending = [], collections.deque()
    bar = tqdm(total=len(paths), desc="checking images", unit="image", disable=not progress)
    with ThreadPoolExecutor(workers) as pool, bar:
        for path in paths:
            pending.append(pool.submit(_decoded_size, path))
            if len(pending) >= 4 * workers:
                results.append(pending.popleft().result())
                bar.update()
        for future in pending:
            results.append(future.result())
            bar.update()
    return results


def check_files(
    root: str | os.PathLike,
    files: Sequence[str],
    *,
    image_size: int = 0,
    workers: int = 0,
    progress: bool = True,
) -> FolderReport:
    """Decodes each of `files` (relative to `root`) with the loader's `load_rgb`, on `workers`
    threads (0: min(32, CPUs + 4)), and reports those that fail and those smaller than
    `image_size` on their shorter side. `progress=False` hides the progress bar."""
    workers = workers or min(32, (os.cpu_count() or 1) + 4)
    results = _decoded_sizes([os.path.join(root, f) for f in files], workers, progress)
    decoded = [(f, r) for f, r in zip(files, results, strict=True) if isinstance(r, tuple)]
    sizes = [size for _, size in decoded] or [(0, 0)]
    return FolderReport(
        root=str(root),
        num_files=len(files),
        image_size=image_size,
        unreadable=tuple((f, r) for f, r in zip(files, results, strict=True) if isinstance(r, str)),
        small=tuple((f, size) for f, size in decoded if min(size) < image_size),
        min_size=(min(h for h, _ in sizes), min(w for _, w in sizes)),
        max_size=(max(h for h, _ in sizes), max(w for _, w in sizes)),
    )


def check_folder(root: str | os.PathLike, **kwargs) -> FolderReport:
    """`check_files` over the image files the folder dataset reads (`ImageFolderSource`)."""
    source = ImageFolderSource(root)
    return check_files(source.root, source.files, **kwargs)


def format_report(report: FolderReport, *, limit: int = 10) -> str:
    """The report in a few lines: counts, size range, every file that does not decode (with why),
    and the first `limit` images smaller than the training size."""
    r, bad = report, len(report.unreadable)
    lines = [
        f"{r.num_files:,} image files in {r.root}: {r.num_files - bad:,} decode, {bad:,} do not."
    ]
    if bad < r.num_files:
        (h0, w0), (h1, w1) = r.min_size, r.max_size
        lines.append(f"Heights {h0}..{h1}, widths {w0}..{w1} pixels.")
    if r.small:
        h, w = r.smallest
        lines.append(
            f"{len(r.small):,} smaller than image_size {r.image_size} (upscaled when training; "
            f"the smallest {h}x{w}):"
        )
        lines += [f"  {name}  {size[0]}x{size[1]}" for name, size in r.small[:limit]]
        if len(r.small) > limit:
            lines.append(f"  ... and {len(r.small) - limit:,} more")
    elif r.image_size:
        lines.append(f"None smaller than image_size {r.image_size}.")
    if bad:
        lines.append("Do not decode:")
        lines += [f"  {name}: {why}" for name, why in r.unreadable]
    return "\n".join(lines)


def unreadable_message(report: FolderReport, *, limit: int = 5) -> str:
    """The `ImageDecodeError` text: how many files fail, the first `limit` with why, what to do."""
    bad = report.unreadable
    listed = [f"  {name}: {why}" for name, why in bad[:limit]]
    if listed and len(bad) > limit:
        command = f"diffusion-jax check-data {shlex.quote(report.root)}"
        listed.append(f"  ... and {len(bad) - limit:,} more (`{command}` lists them all)")
    head = f"{len(bad):,} of {report.num_files:,} image files in {report.root} do not decode"
    return "\n".join([
        head + (":" if listed else "."),
        *listed,
        "Fix or delete them, or set data.skip_unreadable=True to leave them out.",
    ])  # fmt: skip


def _warn(report: FolderReport, left_out: bool) -> None:
    if report.small:
        h, w = report.smallest
        log.warning(
            "%d of %d images in %s are smaller than data.image_size=%d (the smallest %dx%d) and "
            "will be upscaled; `diffusion-jax check-data %s --image_size %d` lists them.",
            len(report.small), report.num_files, report.root, report.image_size, h, w,
            shlex.quote(report.root), report.image_size,
        )  # fmt: skip
    if left_out:
        names = ", ".join(name for name, _ in report.unreadable[:5])
        more = ", ..." if len(report.unreadable) > 5 else ""
        log.warning(
            "Left out %d of %d image files in %s that do not decode (data.skip_unreadable): %s%s",
            len(report.unreadable), report.num_files, report.root, names, more,
        )  # fmt: skip


# (root, digest of the file list, image_size, skip_unreadable) -> the files left out
_CHECKED: dict[tuple, tuple[str, ...]] = {}


def checked_source(
    source: ImageFolderSource, *, image_size: int = 0, skip_unreadable: bool = False
) -> ImageFolderSource:
    """`source` with its files checked, once per process per folder and file list. Files that do
    not decode raise `ImageDecodeError`, or with `skip_unreadable` are left out with a warning;
    images smaller than `image_size` are counted in a warning."""
    listing = "\0".join(source.files).encode("utf-8", "surrogateescape")
    key = (source.root, hashlib.sha256(listing).hexdigest(), image_size, skip_unreadable)
    if key not in _CHECKED:
        report = check_files(source.root, source.files, image_size=image_size)
        _warn(report, left_out=skip_unreadable and bool(report.unreadable))
        if report.unreadable and not skip_unreadable:
            raise ImageDecodeError(unreadable_message(report))
        _CHECKED[key] = tuple(name for name, _ in report.unreadable)
    left_out = _CHECKED[key]
    return source.without(left_out) if left_out else source
