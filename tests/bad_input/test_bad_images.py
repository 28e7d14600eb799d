"""Bad images: every way a file, an upload or a canvas array can be wrong.

Files go through ``digits predict default PATH`` in-process and end in one clear
line naming the file (exit 1: a file predict cannot read; see test_cli.py for
several files at once), or in the right digit: a real MNIST test digit
saved in an odd but valid form (16-bit, CMYK, a palette with transparency, an
animation, an EXIF-rotated photo...) must still be read as its label by the
shipped default CNN. Canvas arrays and uploaded bytes go to
``digits.preprocess.preprocess``, as the Draw page passes them.

Reads are bounded: anything but a regular file (a directory, a device, a FIFO, a
socket) is refused in under a second, and a decompression bomb is refused from
its header without allocating its pixels. Should that break, no case can hang
the test run or eat the machine's memory: in-process cases run under a deadline
(``signal.setitimer``) and an address-space cap (``RLIMIT_AS``); those that
measure memory run in a child process with a cap and a timeout.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from catalogue import FAILURE, assert_clean_error
from PIL import Image

from digits.errors import NoDigitFound, PreprocessError
from digits.preprocess import MAX_BYTES, MAX_PIXELS, preprocess

FAST = 1.0  # seconds: a refusal must come at least this quickly

# ---------------------------------------------------------------- sample digits


@dataclass(frozen=True)
class Sample:
    """Real MNIST test digits, drawn as a user would give them."""

    page: np.ndarray  # (192, 192) uint8, the first digit in dark ink on white
    label: str  # its label
    other_page: np.ndarray  # a second digit with a different label, same form
    other_label: str


def on_paper(digit: np.ndarray) -> np.ndarray:
    """(192, 192) uint8: a (28, 28) MNIST digit enlarged 4x, dark ink on white."""
    big = np.asarray(
        Image.fromarray(digit).resize((112, 112), Image.Resampling.BICUBIC)
    )
    return np.pad(255 - big, 40, constant_values=255)


@pytest.fixture(scope="module")
def sample(mnist) -> Sample:
    # The first two test digits, a 7 and a 2, which the default CNN reads
    # correctly (as it does 99.3% of the test set).
    (a, b), (la, lb) = mnist.x_test[:2], mnist.y_test[:2]
    assert la != lb
    return Sample(on_paper(a), str(la), on_paper(b), str(lb))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gray(page: np.ndarray) -> Image.Image:
    return Image.fromarray(page)


# ---------------------------------------------------------------- crafted files


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: a few hundred KB that
    decode to width * height bytes (900 MB for 30000 x 30000)."""
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG whose frame header (SOF0) claims width x height."""
    data = bytearray(encode(Image.new("L", (16, 16), 255), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_claiming(width: int, height: int) -> bytes:
    """A small valid GIF whose logical screen claims width x height."""
    data = bytearray(encode(Image.new("L", (16, 16), 255), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def sparse_file(path: Path, size: int, start: bytes = b"") -> Path:
    """A file of `size` bytes that takes no disk space (a hole after `start`)."""
    with open(path, "wb") as file:
        file.write(start)
        file.truncate(size)
    return path


# ---------------------------------------------------------------- guards


class Hung(Exception):
    """The deadline passed: the code under test blocked."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Interrupt the block with `Hung` after `seconds` (a blocking open() or read()
    of a FIFO returns EINTR and Python raises from the signal handler)."""

    def expire(signum, frame):
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def address_space() -> int:
    """This process's virtual memory size, bytes (Linux)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmSize:"))
    return int(line.split()[1]) * 1024


@contextmanager
def memory_cap(extra: int = 2**30) -> Iterator[None]:
    """Cap this process's address space at `extra` bytes above its present size,
    so an unbounded read ends in MemoryError instead of the machine's memory
    running out; the previous (soft) limit is restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = address_space() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextmanager
def guarded() -> Iterator[None]:
    """Neither a hang nor an endless read can take the test run down."""
    with memory_cap(), deadline(10):
        yield


def timed_cli(cli, *args):
    """Run the CLI guarded; returns (result, seconds)."""
    start = time.perf_counter()
    with guarded():
        result = cli(*args)
    return result, time.perf_counter() - start


def assert_refused(cli, path: Path | str, *fragments: str) -> str:
    """`digits predict default PATH` exits 1 quickly with one line naming the path
    and `fragments`, and leaves the file as it was."""
    path = str(path)
    before = Path(path).read_bytes() if os.path.isfile(path) else None
    result, seconds = timed_cli(cli, "predict", "default", path)
    line = assert_clean_error(result, path, *fragments, code=FAILURE)
    assert seconds < FAST, seconds
    assert result.out == ""
    if before is not None:
        assert Path(path).read_bytes() == before  # nothing lost
    return line


def predicted_label(cli, path: Path | str) -> str:
    result = cli("predict", "default", str(path), "--json")
    assert result.code == 0, result.err
    assert "Traceback" not in result.err
    (prediction,) = json.loads(result.out)["predictions"]
    assert prediction["file"] == str(path)
    return prediction["label"]


# ---------------------------------------------------------------- files refused

# Each maker writes one bad file into a folder and returns its path.
Maker = Callable[[Path, Sample], Path]


def write(name: str, content: bytes | Callable[[Sample], bytes]) -> Maker:
    def make(folder: Path, sample: Sample) -> Path:
        data = content(sample) if callable(content) else content
        path = folder / name
        path.write_bytes(data)
        return path

    return make


def truncated(fmt: str, keep: float, **options) -> Callable[[Sample], bytes]:
    def content(sample: Sample) -> bytes:
        data = encode(gray(sample.page), fmt, **options)
        return data[: int(len(data) * keep)]

    return content


def blank(colour, mode: str = "L", size=(192, 192)) -> bytes:
    return encode(Image.new(mode, size, colour), "PNG")


def multipage_tiff(sample: Sample) -> bytes:
    pages = [gray(sample.page), gray(sample.other_page)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def transparent_digit(sample: Sample) -> bytes:
    """RGBA with the digit in its colour channels but every pixel transparent."""
    rgba = np.dstack([np.repeat(sample.page[..., None], 3, axis=2), 0 * sample.page])
    return encode(Image.fromarray(rgba.astype(np.uint8)), "PNG")


def garbled_png(sample: Sample) -> bytes:
    """A PNG whose compressed pixel data is overwritten with noise."""
    data = bytearray(encode(gray(sample.page), "PNG"))
    start = data.index(b"IDAT") + 8
    noise = np.random.default_rng(0).integers(0, 256, 200, np.uint8).tobytes()
    data[start : start + 200] = noise
    return bytes(data)


def directory(folder: Path, sample: Sample) -> Path:
    path = folder / "digits.png"
    path.mkdir()
    (path / "inside.png").write_bytes(encode(gray(sample.page), "PNG"))
    return path


def missing(folder: Path, sample: Sample) -> Path:
    return folder / "no such digit.png"


def unix_socket(folder: Path, sample: Sample) -> Path:
    # Bound by a relative name: socket paths are limited to about 100 bytes.
    server = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        server.bind("d.png")
    finally:
        os.chdir(cwd)
    server.close()  # the socket file stays
    return folder / "d.png"


def symlink_loop(folder: Path, sample: Sample) -> Path:
    (folder / "a.png").symlink_to(folder / "b.png")
    (folder / "b.png").symlink_to(folder / "a.png")
    return folder / "a.png"


def dangling_symlink(folder: Path, sample: Sample) -> Path:
    (folder / "seven.png").symlink_to(folder / "deleted.png")
    return folder / "seven.png"


def symlink_to_directory(folder: Path, sample: Sample) -> Path:
    (folder / "sub").mkdir()
    (folder / "seven.png").symlink_to(folder / "sub")
    return folder / "seven.png"


def over_size_limit(folder: Path, sample: Sample) -> Path:
    return sparse_file(folder / "huge.png", MAX_BYTES + 1, b"\x89PNG\r\n\x1a\n")


def valid_png_padded_over_limit(folder: Path, sample: Sample) -> Path:
    png = encode(gray(sample.page), "PNG")
    return sparse_file(folder / "padded.png", 2 * MAX_BYTES, png)


def dev_null(folder: Path, sample: Sample) -> Path:
    # Safe in-process even if the check broke: it reads as empty at once.
    return Path("/dev/null")


REFUSED = [
    pytest.param(write("empty.png", b""), ["empty", "0 bytes"], id="zero-byte-file"),
    pytest.param(
        write("seven.png", b"I am a seven, honestly.\n"),
        ["not a PNG, JPEG"],
        id="text-named-png",
    ),
    pytest.param(
        write("seven.png", b"\x89PNG\r\n\x1a\n"),
        ["corrupt or truncated"],
        id="png-signature-only",
    ),
    pytest.param(
        write("seven.png", truncated("PNG", 0.5)),
        ["corrupt or truncated"],
        id="truncated-png",
    ),
    pytest.param(
        write("seven.png", truncated("PNG", 0.05)),
        ["corrupt or truncated"],
        id="png-cut-in-header",
    ),
    pytest.param(
        write("seven.png", garbled_png), ["corrupt or truncated"], id="garbled-png-data"
    ),
    pytest.param(
        write("seven.jpg", truncated("JPEG", 0.5, quality=90)),
        ["corrupt or truncated"],
        id="truncated-jpeg",
    ),
    pytest.param(
        write("seven.jpg", truncated("JPEG", 0.5, quality=90, progressive=True)),
        ["corrupt or truncated"],
        id="truncated-progressive-jpeg",
    ),
    pytest.param(
        write("seven.gif", truncated("GIF", 0.5)),
        ["corrupt or truncated"],
        id="truncated-gif",
    ),
    pytest.param(
        write("seven.bmp", truncated("BMP", 0.5)),
        ["corrupt or truncated"],
        id="truncated-bmp",
    ),
    pytest.param(
        write("seven.webp", truncated("WEBP", 0.5)),
        ["corrupt or truncated"],
        id="truncated-webp",
    ),
    pytest.param(
        write("bomb.png", png_bomb(30000, 30000)),
        ["too large to decode safely", "megapixels"],
        id="png-bomb-30000x30000",
    ),
    pytest.param(
        write("big.png", png_bomb(5000, 4000)),
        ["5000 x 4000 pixels", "4096 x 4096"],
        id="png-5000x4000-over-pixel-limit",
    ),
    pytest.param(
        write("bomb.jpg", jpeg_claiming(60000, 60000)),
        ["too large to decode safely"],
        id="jpeg-header-claims-60000x60000",
    ),
    pytest.param(
        write("big.jpg", jpeg_claiming(5000, 5000)),
        ["5000 x 5000 pixels"],
        id="jpeg-header-claims-5000x5000",
    ),
    pytest.param(
        write("bomb.gif", gif_claiming(65535, 65535)),
        ["too large to decode safely"],
        id="gif-screen-claims-65535x65535",
    ),
    pytest.param(over_size_limit, ["20 MB limit"], id="file-over-size-limit"),
    pytest.param(
        valid_png_padded_over_limit, ["20 MB limit"], id="valid-png-padded-over-limit"
    ),
    pytest.param(
        write("white.png", blank(255)), ["No digit found", "blank"], id="all-white"
    ),
    pytest.param(
        write("black.png", blank(0)), ["No digit found", "blank"], id="all-black"
    ),
    pytest.param(
        write(
            "grey.jpg", encode(Image.new("RGB", (300, 200), (128, 120, 110)), "JPEG")
        ),
        ["No digit found"],
        id="uniform-grey-photo",
    ),
    pytest.param(
        write("clear.png", blank((0, 0, 0, 0), "RGBA")),
        ["No digit found", "transparent"],
        id="rgba-all-transparent",
    ),
    pytest.param(
        write("hidden.png", transparent_digit),
        ["No digit found", "transparent"],
        id="rgba-digit-under-zero-alpha",
    ),
    pytest.param(
        write("dot.png", blank(0, size=(1, 1))), ["1 x 1 pixels", "too small"], id="1x1"
    ),
    pytest.param(write("tiny.png", blank(0, size=(5, 7))), ["5 x 7 pixels"], id="5x7"),
    pytest.param(
        write("strip.png", blank(255, size=(1, 2000))),
        ["No digit found", "blank"],
        id="blank-1x2000-strip",
    ),
    pytest.param(
        write(
            "seven.png",
            b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg">'
            b'<text x="0" y="20">7</text></svg>\n',
        ),
        ["SVG, HTML"],
        id="svg-named-png",
    ),
    pytest.param(
        write("seven.png", b"<!DOCTYPE html><html><body><img src=7.png></body></html>"),
        ["SVG, HTML"],
        id="html-named-png",
    ),
    pytest.param(
        write("seven.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"),
        ["PDF"],
        id="pdf",
    ),
    pytest.param(
        write("scan.tif", multipage_tiff),
        ["TIFF", "not supported"],
        id="multipage-tiff",
    ),
    pytest.param(directory, ["is a directory"], id="directory"),
    pytest.param(symlink_to_directory, ["is a directory"], id="symlink-to-directory"),
    pytest.param(missing, ["No such file"], id="missing-path"),
    pytest.param(dangling_symlink, ["No such file"], id="dangling-symlink"),
    pytest.param(symlink_loop, ["symbolic links"], id="symlink-loop"),
    pytest.param(unix_socket, ["is a socket"], id="unix-socket"),
    pytest.param(dev_null, ["character device"], id="dev-null"),
]


# A Python warning would print on the user's stderr beside the one line.
@pytest.mark.filterwarnings("error::UserWarning", "error::RuntimeWarning")
@pytest.mark.parametrize(("make", "fragments"), REFUSED)
def test_bad_image_file_is_refused_clearly(cli, tmp_path, sample, make, fragments):
    assert_refused(cli, make(tmp_path, sample), *fragments)


def test_one_bad_file_among_good_ones_is_its_own_error(cli, tmp_path, sample):
    """Every file is answered: the good ones predicted, the bad one a line on
    stderr (issue 18); the status says one failed."""
    good = tmp_path / "seven.png"
    good.write_bytes(encode(gray(sample.page), "PNG"))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    result = cli("predict", "default", good, bad, good)
    assert_clean_error(result, str(bad), "not a PNG", code=FAILURE)
    assert [line.split(":")[0] for line in result.out.splitlines()] == [str(good)] * 2


# ---------------------------------------------------------------- files read right


def exif_rotated(orientation: int) -> Callable[[Sample], bytes]:
    """A JPEG stored turned, with the EXIF note that turns it upright."""
    # How the camera stored the pixels for each EXIF orientation.
    stored = {3: lambda a: np.rot90(a, 2), 6: np.rot90, 8: lambda a: np.rot90(a, -1)}

    def content(sample: Sample) -> bytes:
        exif = Image.Exif()
        exif[0x0112] = orientation
        pixels = np.ascontiguousarray(stored[orientation](sample.page))
        return encode(gray(pixels), "JPEG", quality=92, exif=exif)

    return content


def sixteen_bit(sample: Sample) -> bytes:
    image = Image.fromarray(sample.page.astype(np.uint16) * 257)
    assert image.mode == "I;16"
    return encode(image, "PNG")


def cmyk_jpeg(sample: Sample) -> bytes:
    zero = Image.new("L", sample.page.shape[::-1], 0)
    black_ink = gray(255 - sample.page)
    return encode(Image.merge("CMYK", (zero, zero, zero, black_ink)), "JPEG")


def palette_with_transparency(sample: Sample) -> bytes:
    """16 greys of ink in a palette whose paper colour (index 0) is transparent."""
    levels = (255 - sample.page.astype(int)) * 15 // 255  # 0 = paper
    palette = [v for i in range(16) for v in [255 - 17 * i] * 3]
    image = Image.fromarray(levels.astype(np.uint8), "P")
    image.putpalette(palette)
    return encode(image, "PNG", transparency=0)


def rgba_ink_on_clear(sample: Sample) -> bytes:
    """Black strokes on a transparent background, as a canvas exports them."""
    ink = 255 - sample.page
    rgba = np.dstack([np.zeros((*ink.shape, 3), np.uint8), ink])
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def la_png(sample: Sample) -> bytes:
    ink = 255 - sample.page
    return encode(Image.fromarray(np.dstack([0 * ink, ink]), "LA"), "PNG")


def animated_gif(sample: Sample) -> bytes:
    frames = [gray(sample.page), gray(sample.other_page)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def animated_webp(sample: Sample) -> bytes:
    frames = [gray(sample.page).convert("RGB"), gray(sample.other_page).convert("RGB")]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])


def one_bit(sample: Sample) -> bytes:
    return encode(gray(sample.page).convert("1", dither=Image.Dither.NONE), "PNG")


def png_with_exif(sample: Sample) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 3
    return encode(gray(np.rot90(sample.page, 2).copy()), "PNG", exif=exif)


def damaged_exif(sample: Sample) -> bytes:
    """A JPEG whose EXIF block ends right after its header: the pixels are fine."""
    return encode(gray(sample.page), "JPEG", exif=b"Exif\0\0MM\0*\0\0\0\x08")


READ = [
    pytest.param("seven.png", lambda s: encode(gray(s.page), "PNG"), id="png"),
    pytest.param(
        "seven.jpg", lambda s: encode(gray(s.page), "JPEG", quality=85), id="jpeg"
    ),
    pytest.param(
        "seven.jpg",
        lambda s: encode(gray(s.page), "JPEG", progressive=True),
        id="progressive-jpeg",
    ),
    pytest.param(
        "seven.png",
        lambda s: encode(gray(s.page), "PNG", interlace=1),
        id="interlaced-png",
    ),
    pytest.param("seven.png", sixteen_bit, id="16-bit-greyscale-png"),
    pytest.param("seven.jpg", cmyk_jpeg, id="cmyk-jpeg"),
    pytest.param("seven.png", palette_with_transparency, id="palette-png-transparent"),
    pytest.param("seven.png", rgba_ink_on_clear, id="rgba-ink-on-transparent"),
    pytest.param("seven.png", la_png, id="greyscale-with-alpha"),
    pytest.param("seven.png", one_bit, id="1-bit-png"),
    pytest.param("seven.gif", animated_gif, id="animated-gif-first-frame"),
    pytest.param("seven.webp", animated_webp, id="animated-webp-first-frame"),
    pytest.param("seven.bmp", lambda s: encode(gray(s.page), "BMP"), id="bmp"),
    pytest.param("seven.jpg", exif_rotated(6), id="exif-rotated-90-jpeg"),
    pytest.param("seven.jpg", exif_rotated(3), id="exif-rotated-180-jpeg"),
    pytest.param("seven.jpg", exif_rotated(8), id="exif-rotated-270-jpeg"),
    pytest.param("seven.png", png_with_exif, id="exif-rotated-png"),
    pytest.param("seven.jpg", damaged_exif, id="damaged-exif-block"),
    pytest.param(
        "seven.png", lambda s: encode(gray(s.page), "JPEG"), id="jpeg-named-png"
    ),
    pytest.param("seven", lambda s: encode(gray(s.page), "PNG"), id="no-extension"),
    pytest.param(
        "my digit ✓ (2nd try) [7] é.PNG",
        lambda s: encode(gray(s.page), "PNG"),
        id="spaces-unicode-brackets-in-name",
    ),
    pytest.param(
        "$HOME; rm -rf ~ 'seven'.png",
        lambda s: encode(gray(s.page), "PNG"),
        id="shell-characters-in-name",
    ),
]


# A Python warning would print on the user's stderr beside the one line.
@pytest.mark.filterwarnings("error::UserWarning", "error::RuntimeWarning")
@pytest.mark.parametrize(("name", "content"), READ)
def test_odd_but_valid_image_is_read_as_its_label(cli, tmp_path, sample, name, content):
    path = tmp_path / name
    data = content(sample)
    path.write_bytes(data)
    assert predicted_label(cli, path) == sample.label
    assert path.read_bytes() == data  # nothing changed


def test_symlink_to_a_regular_file_is_read(cli, tmp_path, sample):
    target = tmp_path / "seven.png"
    target.write_bytes(encode(gray(sample.page), "PNG"))
    link = tmp_path / "link.png"
    link.symlink_to(target)
    assert predicted_label(cli, link) == sample.label


def test_one_pixel_wide_strip_is_read_as_a_one(cli, tmp_path):
    """A 1 x 2000 image holding a vertical stroke: the digit 1, not an error."""
    strip = np.full((2000, 1), 255, np.uint8)
    strip[300:1700] = 0
    path = tmp_path / "strip.png"
    path.write_bytes(encode(gray(strip), "PNG"))
    assert predicted_label(cli, path) == "1"


def test_relative_path_starting_with_a_dash(cli, tmp_path, sample, monkeypatch):
    """After ``--`` a file called ``-7.png`` is a file, not an option."""
    monkeypatch.chdir(tmp_path)
    Path("-7.png").write_bytes(encode(gray(sample.page), "PNG"))
    result = cli("predict", "default", "--json", "--", "-7.png")
    assert result.code == 0, result.err
    assert json.loads(result.out)["predictions"][0]["label"] == sample.label


# ---------------------------------------------------------------- FIFOs and races


def test_fifo_without_a_writer_is_refused_at_once(cli, tmp_path):
    fifo = tmp_path / "seven.png"
    os.mkfifo(fifo)
    assert_refused(cli, fifo, "named pipe (FIFO)")


def test_fifo_with_a_writer_is_refused_and_the_writer_left_alone(cli, tmp_path):
    """A program feeding a FIFO is not read from: it is refused before opening."""
    fifo = tmp_path / "seven.png"
    os.mkfifo(fifo)
    feed = (
        f"pipe = open({str(fifo)!r}, 'wb')\nwhile True:\n    pipe.write(bytes(65536))"
    )
    writer = subprocess.Popen([sys.executable, "-c", feed], stderr=subprocess.DEVNULL)
    try:
        assert_refused(cli, fifo, "named pipe (FIFO)")
        assert writer.poll() is None  # still waiting for a reader
    finally:
        writer.kill()
        writer.wait(timeout=10)


@pytest.mark.parametrize(
    ("swap", "fragment"),
    [
        pytest.param(
            lambda p: os.mkfifo(p), "named pipe (FIFO)", id="swapped-for-fifo"
        ),
        pytest.param(
            lambda p: os.symlink("/dev/zero", p),
            "character device",
            id="swapped-for-dev-zero",
        ),
        pytest.param(lambda p: os.mkdir(p), "directory", id="swapped-for-directory"),
    ],
)
def test_path_swapped_between_stat_and_open_is_refused(
    cli, tmp_path, sample, monkeypatch, swap, fragment
):
    """Another program replaces the checked file just before it is opened: the
    check is repeated on the open file (fstat), and nothing blocks."""
    path = tmp_path / "seven.png"
    path.write_bytes(encode(gray(sample.page), "PNG"))
    real_stat = os.stat
    swapped = []

    def stat_then_swap(target, *args, **kwargs):
        info = real_stat(target, *args, **kwargs)
        if os.fspath(target) == str(path) and not swapped:
            replacement = tmp_path / "replacement"
            swap(replacement)
            os.unlink(path)  # os.replace cannot put a directory over a file
            os.rename(replacement, path)
            swapped.append(True)
        return info

    monkeypatch.setattr(os, "stat", stat_then_swap)
    result, seconds = timed_cli(cli, "predict", "default", path)
    monkeypatch.undo()
    assert swapped
    assert_clean_error(result, str(path), fragment, code=FAILURE)
    assert seconds < FAST, seconds


# ---------------------------------------------------------------- in a child process

# Runs `digits predict` in a fresh interpreter with its address space capped 1 GiB
# above what the imports took, so an unbounded read or a decoded bomb fails there
# instead of exhausting the machine; reports the exit status, stderr, the time
# and the growth of peak memory, as JSON.
CHILD = r"""
import contextlib, io, json, resource, sys, time
from digits.cli import main

def vm_bytes():
    with open("/proc/self/status") as status:
        line = next(l for l in status if l.startswith("VmSize:"))
    return int(line.split()[1]) * 1024

cap = vm_bytes() + 2**30
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
err = io.StringIO()
start = time.perf_counter()
with contextlib.redirect_stderr(err):
    code = main(sys.argv[1:])
seconds = time.perf_counter() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"code": code, "err": err.getvalue(), "seconds": seconds,
                  "grown_mb": grown / 1024}))
"""


def run_child(runs: Path, *args: str) -> dict:
    env = {**os.environ, "DIGITS_RUNS_DIR": str(runs)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"digits {' '.join(args)} still running after 30 s")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        pytest.param(lambda d: Path("/dev/zero"), "character device", id="dev-zero"),
        pytest.param(
            lambda d: Path("/dev/urandom"), "character device", id="dev-urandom"
        ),
        pytest.param(
            lambda d: (d / "seven.png").symlink_to("/dev/zero") or d / "seven.png",
            "character device",
            id="symlink-to-dev-zero",
        ),
        pytest.param(
            lambda d: (
                (d / "bomb.png").write_bytes(png_bomb(30000, 30000)) and d / "bomb.png"
            ),
            "too large to decode safely",
            id="png-bomb-memory",
        ),
        pytest.param(
            lambda d: (
                (d / "bomb.jpg").write_bytes(jpeg_claiming(60000, 60000))
                and d / "bomb.jpg"
            ),
            "too large to decode safely",
            id="jpeg-bomb-memory",
        ),
    ],
)
def test_endless_or_huge_input_ends_fast_with_little_memory(
    runs, tmp_path, make, fragment
):
    path = str(make(tmp_path))
    report = run_child(runs, "predict", "default", path)
    assert report["code"] == 1, report
    lines = report["err"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("digits: error: "), report
    assert path in lines[0] and fragment in lines[0], report
    assert report["seconds"] < FAST, report
    assert report["grown_mb"] < 50, report  # the bomb's 900 MB were never allocated


# ---------------------------------------------------------------- uploads (bytes)


class ReadFails(io.RawIOBase):
    """An upload whose read fails, as a dropped network file system does."""

    name = "seven.png"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise OSError(5, "Input/output error")


UPLOADS = [
    pytest.param(
        lambda: b"\x89PNG" + bytes(MAX_BYTES), "20 MB limit", id="bytes-over-limit"
    ),
    pytest.param(
        lambda: bytearray(MAX_BYTES + 1), "20 MB limit", id="bytearray-over-limit"
    ),
    pytest.param(
        lambda: memoryview(np.zeros(MAX_BYTES // 8 + 1, np.float64)),
        "20 MB limit",
        id="memoryview-over-limit",
    ),
    pytest.param(
        lambda: io.BytesIO(bytes(MAX_BYTES + 1)),
        "20 MB limit",
        id="file-object-over-limit",
    ),
    pytest.param(
        lambda: open("/dev/zero", "rb"), "20 MB limit", id="file-object-dev-zero"
    ),
    pytest.param(lambda: io.StringIO("7"), "binary mode", id="text-mode-file-object"),
    pytest.param(
        lambda: io.BufferedReader(ReadFails()), "Input/output error", id="read-fails"
    ),
    pytest.param(lambda: b"", "empty", id="empty-bytes"),
    pytest.param(lambda: b"GIF89a", "corrupt or truncated", id="gif-signature-only"),
]


@pytest.mark.parametrize(("make", "fragment"), UPLOADS)
def test_bad_upload_is_refused_quickly(make, fragment):
    source = make()
    start = time.perf_counter()
    with guarded(), pytest.raises(PreprocessError) as caught:
        preprocess(source, name="upload.png")
    assert time.perf_counter() - start < FAST
    message = str(caught.value)
    assert "upload.png" in message and fragment in message, message
    assert "\n" not in message
    if hasattr(source, "close"):
        source.close()


def test_upload_file_object_is_read_at_most_one_byte_over_the_limit():
    """A stream that never ends is read to the limit plus one byte, then refused."""

    class Endless(io.RawIOBase):
        read_total = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            buffer[:] = b"\xff" * len(buffer)
            Endless.read_total += len(buffer)
            return len(buffer)

    with guarded(), pytest.raises(PreprocessError, match="20 MB limit"):
        preprocess(Endless(), name="stream.png")
    assert Endless.read_total == MAX_BYTES + 1


# ---------------------------------------------------------------- canvas arrays

ARRAYS = [
    pytest.param(np.zeros(784, np.uint8), "shape (784,)", id="1d"),
    pytest.param(np.zeros((1, 28, 28, 1), np.uint8), "shape (1, 28, 28, 1)", id="4d"),
    pytest.param(np.array(7, np.uint8), "shape ()", id="0d-scalar"),
    pytest.param(np.zeros((28, 28, 2), np.uint8), "shape (28, 28, 2)", id="2-channels"),
    pytest.param(np.zeros((0, 0), np.uint8), "no pixels", id="shape-0x0"),
    pytest.param(np.zeros((0, 280, 4), np.uint8), "no pixels", id="shape-0x280x4"),
    pytest.param(np.zeros((4, 4), np.uint8), "too small", id="4x4"),
    pytest.param(np.zeros((28, 28), np.complex128), "dtype complex128", id="complex"),
    pytest.param(np.zeros((28, 28), object), "dtype object", id="object"),
    pytest.param(np.full((28, 28), "7"), "dtype <U1", id="strings"),
    pytest.param(
        np.zeros((28, 28), "datetime64[s]"), "dtype datetime64", id="datetime"
    ),
    pytest.param(np.full((28, 28), np.nan, np.float32), "NaN", id="nan"),
    pytest.param(
        np.where(np.eye(28) > 0, np.inf, 0.0), "NaN or infinite", id="inf-stroke"
    ),
    pytest.param(-np.eye(28, dtype=np.int64), "negative", id="negative-ints"),
    pytest.param(np.eye(28) - 0.5, "negative", id="negative-floats"),
    pytest.param(np.eye(28) * 1000.0, "floats up to 1000", id="floats-over-255"),
    pytest.param(
        np.eye(28, dtype=np.int64) * 2**40, "integers up to", id="ints-over-16-bit"
    ),
    pytest.param(
        np.zeros((MAX_PIXELS // 4096 + 1, 4096), np.uint8),
        "megapixels",
        id="too-many-pixels",
    ),
]


@pytest.mark.parametrize(("array", "fragment"), ARRAYS)
def test_bad_canvas_array_is_refused_clearly(array, fragment):
    with pytest.raises(PreprocessError) as caught:
        preprocess(array)
    message = str(caught.value)
    assert fragment in message, message
    assert not isinstance(caught.value, NoDigitFound)


BLANK_CANVASES = [
    pytest.param(np.zeros((280, 280, 4), np.uint8), "transparent", id="empty-canvas"),
    pytest.param(
        np.dstack(
            [np.full((280, 280, 3), 255, np.uint8), np.zeros((280, 280), np.uint8)]
        ),
        "transparent",
        id="white-strokes-all-transparent",
    ),
    pytest.param(
        np.full((280, 280, 4), 255, np.uint8), "blank", id="opaque-white-canvas"
    ),
    pytest.param(np.zeros((280, 280), np.float32), "blank", id="float-zeros"),
    pytest.param(np.zeros((280, 280), bool), "blank", id="bool-zeros"),
]


@pytest.mark.parametrize(("array", "fragment"), BLANK_CANVASES)
def test_empty_drawing_says_no_digit_found(array, fragment):
    with pytest.raises(NoDigitFound, match="No digit found") as caught:
        preprocess(array)
    assert fragment in str(caught.value)
    assert "Draw a digit" in str(caught.value)


@pytest.fixture(scope="module")
def reference(mnist) -> tuple[np.ndarray, np.ndarray]:
    """An MNIST digit (28, 28) uint8 and its preprocessed form."""
    digit = mnist.x_test[0]
    return digit, preprocess(digit).centred


DEEP = [
    pytest.param(lambda d: d.astype(np.int32) * 257, id="int32-array-16-bit-values"),
    pytest.param(lambda d: d.astype(np.uint16) * 257, id="uint16-array"),
    pytest.param(lambda d: d.astype(np.float64) / 255, id="float64-array-0-1"),
    pytest.param(lambda d: d.astype(np.float32), id="float32-array-0-255"),
    pytest.param(
        lambda d: Image.fromarray(d.astype(np.uint16) * 257), id="pillow-I;16"
    ),
    pytest.param(
        lambda d: Image.fromarray((d.astype(np.int64) * 8421504).astype(np.int32)),
        id="pillow-32-bit-I",
    ),
    pytest.param(
        lambda d: Image.fromarray(d.astype(np.float32) / 255), id="pillow-float-F"
    ),
    pytest.param(
        lambda d: np.dstack([d, d, d, np.full_like(d, 255)]), id="opaque-rgba-canvas"
    ),
]


@pytest.mark.parametrize("convert", DEEP)
def test_deep_and_float_greyscale_give_the_same_input(reference, convert):
    """16-bit, 32-bit and float greyscale are scaled to 0..255, not clipped."""
    digit, expected = reference
    result = preprocess(convert(digit)).centred
    assert np.abs(result.astype(int) - expected).max() <= 1


def test_nan_in_a_float_pillow_image_is_refused():
    image = Image.fromarray(np.full((28, 28), np.nan, np.float32))
    with pytest.raises(PreprocessError, match="NaN"):
        preprocess(image, name="scan.tif")
