"""Speech data: WAV reading, resampling, energy-based voice-activity trimming, fixed crops,
and :func:`load_audio_folder`, a folder of speakers' WAV files as a labelled dataset.

Everything here works with the standard library and numpy (WAV headers are parsed here,
so WAVE_FORMAT_EXTENSIBLE files read too); no audio package is needed. Waveforms are
float32 arrays in ``[-1, 1]``, mono.
"""

from __future__ import annotations

import struct
import warnings
import wave
from collections.abc import Iterator
from math import gcd, inf
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dmlkit._checks import first_few

if TYPE_CHECKING:
    from dmlkit.data.dataset import ArrayDataset

SAMPLE_RATE = 16_000
_AUDIO_SUFFIXES = (".wav",)
#: shortest usable recording, seconds (one 25 ms analysis window of trimming and of the
#: speaker encoder's log-mel front end)
MIN_SECONDS = 0.025
#: longest crop in samples (16 MiB of float32 per item: 262 s at 16 kHz)
MAX_CROP_SAMPLES = 1 << 22
#: a crop may loop the longest recording at most this many times
MAX_CROP_LOOPS = 10.0
#: the sample rates a WAV header may give, Hz (others are damaged headers: resampling
#: from 2 Hz to 16 kHz would allocate 8000 times the file)
MIN_FILE_RATE, MAX_FILE_RATE = 1000, 768_000


_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE  # WAV format tags
#: bytes 2-15 of the subformat GUID of a WAVE_FORMAT_EXTENSIBLE header: the
#: KSDATAFORMAT_SUBTYPE_* family, whose first two bytes are the plain format tag
_SUBTYPE_GUID_TAIL = bytes.fromhex("0000" "0000" "1000" "800000aa00389b71")


#: the size a streaming writer leaves in a chunk header it could not go back to fill in
_UNKNOWN_SIZE = 0xFFFFFFFF


def _wav_chunks(blob: bytes, sizes: dict[bytes, int] | None = None) -> dict[bytes, bytes]:
    """The chunks of a RIFF/WAVE file, ``{id: body}`` (the first of each id).

    A chunk whose stated size runs past the end of the file (a truncated file, or a
    stream's 0xFFFFFFFF placeholder) holds what is there; ``sizes``, when given, gets
    each such chunk's stated size.
    """
    chunks: dict[bytes, bytes] = {}
    pos = 12  # after "RIFF", the RIFF size and "WAVE"
    while pos + 8 <= len(blob):
        cid = blob[pos : pos + 4]
        size = int.from_bytes(blob[pos + 4 : pos + 8], "little")
        if cid not in chunks and pos + 8 + size > len(blob) and sizes is not None:
            sizes[cid] = size
        chunks.setdefault(cid, blob[pos + 8 : pos + 8 + size])
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return chunks


def _wav_format(path: Path, fmt: bytes) -> tuple[int, int, int]:
    """``(channels, sample rate, bytes per sample)`` of a PCM ``fmt `` chunk.

    Plain PCM (tag 1) and WAVE_FORMAT_EXTENSIBLE (tag 0xFFFE) with the PCM subformat are
    read; floating-point and compressed formats are refused.
    """
    if len(fmt) < 16:
        raise ValueError(f"{path} is not a PCM WAV file (its 'fmt ' chunk holds {len(fmt)} "
                         "bytes, fewer than 16); replace or remove it")
    tag, n_ch, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    header = ""
    if tag == _EXTENSIBLE:
        if len(fmt) < 40:
            raise ValueError(f"{path} is not a PCM WAV file (its WAVE_FORMAT_EXTENSIBLE "
                             f"'fmt ' chunk holds {len(fmt)} bytes, fewer than 40); replace "
                             "or remove it")
        guid = fmt[24:40]
        if guid[2:] != _SUBTYPE_GUID_TAIL:
            raise ValueError(f"{path}: WAVE_FORMAT_EXTENSIBLE with the unknown subformat "
                             f"GUID {guid.hex()}, not PCM; convert it to 16-bit PCM, e.g. "
                             f"sox {path.name} -b 16 -e signed-integer out.wav")
        tag, header = int.from_bytes(guid[:2], "little"), " (WAVE_FORMAT_EXTENSIBLE header)"
    if tag == _FLOAT:
        raise ValueError(f"{path} holds {bits}-bit floating-point samples{header}; read_wav "
                         "reads 8/16/24/32-bit integer PCM: convert it, e.g. "
                         f"sox {path.name} -b 16 -e signed-integer out.wav")
    if tag != _PCM:
        raise ValueError(f"{path} is not PCM (format tag {tag:#06x}{header}: compressed "
                         "audio?); convert it to 16-bit PCM, e.g. "
                         f"sox {path.name} -b 16 -e signed-integer out.wav")
    width = (bits + 7) // 8  # (a 20-bit sample sits, left-justified, in 3 bytes)
    if rate and not MIN_FILE_RATE <= rate <= MAX_FILE_RATE:  # (before any resampling)
        raise ValueError(
            f"{path}: its header gives a sample rate of {rate} Hz, outside the "
            f"{MIN_FILE_RATE}-{MAX_FILE_RATE} Hz of audio recordings (a damaged header?); "
            "replace or remove it"
        )
    if n_ch < 1 or rate < 1 or width not in (1, 2, 3, 4):
        raise ValueError(f"{path}: unsupported PCM WAV format ({n_ch} channels, {rate} Hz, "
                         f"{bits} bits per sample); read_wav reads 8/16/24/32-bit PCM with "
                         "at least one channel")
    return n_ch, rate, width


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file as ``(waveform float32 (T,), sample_rate)``, channels averaged.

    Supports 8-bit unsigned and 16/24/32-bit signed PCM, with a plain or a
    WAVE_FORMAT_EXTENSIBLE header (as sox and ffmpeg write 24/32-bit and multichannel
    files). A file cut inside a frame is read up to its last whole frame; one holding
    fewer frames than its header declares is read as far as it goes, with a
    ``UserWarning`` naming it and both counts (a stream's 0xFFFFFFFF size is no
    declaration). A header sample rate outside :data:`MIN_FILE_RATE` to
    :data:`MAX_FILE_RATE` Hz is refused, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such WAV file: {path}")
    blob = path.read_bytes()
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        why = ("the file is empty" if not blob else
               f"it starts with {blob[:4]!r}, not a RIFF/WAVE header")
        raise ValueError(f"{path} is not a PCM WAV file ({why}); replace or remove it")
    stated: dict[bytes, int] = {}  # (sizes of chunks cut short)
    chunks = _wav_chunks(blob, stated)
    for cid in (b"fmt ", b"data"):
        if cid not in chunks:
            raise ValueError(f"{path} is not a PCM WAV file (no {cid.decode()!r} chunk: "
                             "the file ends early or is damaged); replace or remove it")
    n_ch, rate, width = _wav_format(path, chunks[b"fmt "])
    raw = chunks[b"data"]
    whole = len(raw) - len(raw) % (width * n_ch)  # a file cut inside a frame
    if whole == 0:
        raise ValueError(f"{path} holds no audio frames; replace or remove it")
    raw = raw[:whole]
    if stated.get(b"data", _UNKNOWN_SIZE) != _UNKNOWN_SIZE:
        frame = width * n_ch
        warnings.warn(f"{path} holds {whole // frame} of the {stated[b'data'] // frame} "
                      "frames its header declares; the file may be cut short (reading "
                      "what is there)", stacklevel=2)
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    else:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    return x.reshape(-1, n_ch).mean(axis=1).astype(np.float32), rate


def write_wav(path: str | Path, waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write a mono float waveform in ``[-1, 1]`` as 16-bit PCM (clipped)."""
    x = np.clip(np.asarray(waveform, dtype=np.float64).reshape(-1), -1.0, 1.0)
    pcm = np.round(x * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())


def resample(waveform: np.ndarray, orig_rate: int, new_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling by the FFT (spectrum truncated or zero-padded).

    ``(T,) -> (round(T * new_rate / orig_rate),)``. Content above the lower Nyquist
    frequency is removed, so downsampling does not alias.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be > 0, got {orig_rate}, {new_rate}")
    x = np.asarray(waveform, dtype=np.float64).reshape(-1)
    if orig_rate == new_rate or x.size == 0:
        return x.astype(np.float32)
    n_out = resampled_length(x.size, orig_rate, new_rate)
    if n_out < 1:
        raise ValueError(f"{x.size} samples at {orig_rate} Hz ({x.size / orig_rate * 1000:.3g} "
                         f"ms) resample to no sample at {new_rate} Hz")
    spec = np.fft.rfft(x)  # (T//2+1,)
    keep = min(spec.size, n_out // 2 + 1)
    out_spec = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out_spec[:keep] = spec[:keep]
    if n_out > x.size and x.size % 2 == 0:  # the input's Nyquist bin (+f and -f in one)
        out_spec[x.size // 2] *= 0.5  # becomes an inner bin: split between +f and -f
    elif n_out < x.size and n_out % 2 == 0:  # the new Nyquist bin takes +f and -f
        out_spec[-1] = 2.0 * out_spec[-1].real  # (real for a real signal)
    y = np.fft.irfft(out_spec, n=n_out) * (n_out / x.size)  # (n_out,)
    return y.astype(np.float32)


def resampled_length(n: int, orig_rate: int, new_rate: int) -> int:
    """The number of samples :func:`resample` gives for ``n`` at ``orig_rate``."""
    if orig_rate == new_rate:
        return n
    g = gcd(orig_rate, new_rate)
    return int(round(n * (new_rate // g) / (orig_rate // g)))


def frame_energy_db(waveform: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """Energy of each frame in dB, ``(T,) -> (n_frames,)``, frames of ``frame`` samples."""
    x = np.asarray(waveform, dtype=np.float64).reshape(-1)
    if x.size < frame:
        x = np.pad(x, (0, frame - x.size))
    n = 1 + (x.size - frame) // hop
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]  # (n, frame)
    return 10.0 * np.log10(np.mean(x[idx] ** 2, axis=1) + 1e-12)


def trim_silence(
    waveform: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    top_db: float = 35.0,
    frame_ms: float = 25.0,
    hop_ms: float = 10.0,
    min_silence_ms: float = 300.0,
    keep_ms: float = 50.0,
) -> np.ndarray:
    """Energy-based voice-activity trimming.

    A frame is voiced when its energy is within ``top_db`` of the loudest frame. Leading
    and trailing silence is cut, and inner silences longer than ``min_silence_ms`` are
    shortened to ``keep_ms`` on each side. Returns the voiced samples ``(T',)``; an
    all-silent input comes back unchanged.
    """
    if top_db <= 0:
        raise ValueError(f"top_db must be > 0, got {top_db}")
    x = np.asarray(waveform, dtype=np.float32).reshape(-1)
    frame = max(1, int(sample_rate * frame_ms / 1000))
    hop = max(1, int(sample_rate * hop_ms / 1000))
    db = frame_energy_db(x, frame, hop)  # (n,)
    voiced = db >= db.max() - top_db
    if db.max() <= -100.0 or not voiced.any():
        return x
    keep = np.zeros(x.size, dtype=bool)
    pad = int(sample_rate * keep_ms / 1000)
    for i in np.flatnonzero(voiced):
        keep[max(0, i * hop - pad): i * hop + frame + pad] = True
    # inner gaps shorter than min_silence_ms are kept whole
    max_gap = int(sample_rate * min_silence_ms / 1000)
    on = np.flatnonzero(keep)
    gaps = np.flatnonzero(np.diff(on) > 1)
    for g in gaps:
        a, b = on[g] + 1, on[g + 1]
        if b - a <= max_gap:
            keep[a:b] = True
    return x[keep]


def crops(
    waveform: np.ndarray, length: int, *, hop: int | None = None, min_fraction: float = 0.5
) -> np.ndarray:
    """Cut a waveform into fixed-length crops ``(T,) -> (n, length)``.

    Crops start every ``hop`` samples (``length`` by default). A last partial crop
    holding at least ``min_fraction`` of ``length`` is kept, padded by repeating the
    signal; a waveform shorter than that still yields one repeated crop.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    hop = length if hop is None else hop
    if hop < 1:
        raise ValueError(f"hop must be >= 1, got {hop}")
    x = np.asarray(waveform, dtype=np.float32).reshape(-1)
    if x.size == 0:
        raise ValueError("cannot crop an empty waveform")
    starts = list(range(0, max(1, x.size - length + 1), hop))
    tail = starts[-1] + hop
    if x.size > length and tail < x.size and x.size - tail >= min_fraction * length:
        starts.append(tail)
    out = np.empty((len(starts), length), dtype=np.float32)
    for k, s in enumerate(starts):
        seg = x[s: s + length]
        out[k] = np.resize(seg, length) if seg.size < length else seg
    return out


def load_wav(path: str | Path, sample_rate: int = SAMPLE_RATE, *, trim: bool = True) -> np.ndarray:
    """Read a WAV, resample to ``sample_rate`` and optionally trim silence.

    A recording shorter than :data:`MIN_SECONDS` (at ``sample_rate``: one analysis
    window) is refused, naming the file; an all-silent one (every sample 0) is warned
    of, naming it.
    """
    x, rate = read_wav(path)
    need = max(1, int(np.ceil(MIN_SECONDS * sample_rate)))
    if resampled_length(x.size, rate, sample_rate) < need:
        raise ValueError(f"{path} is too short: {x.size} samples at {rate} Hz "
                         f"({x.size / rate * 1000:.3g} ms), under the {MIN_SECONDS * 1000:g} "
                         "ms a recording needs; replace or remove it")
    if not np.any(x):  # (trimming keeps an all-silent recording as it is)
        warnings.warn(f"{path} is silent (every sample is 0): its items carry no voice, "
                      "only zeros labelled as its speaker; replace or remove it", stacklevel=2)
    x = resample(x, rate, sample_rate)
    return trim_silence(x, sample_rate) if trim else x


def _speaker_wavs(folder: Path) -> Iterator[Path]:
    """The WAV files under one speaker folder, in no order; hidden files and folders
    skipped, and entries that are no files."""
    for f in folder.rglob("*"):
        if (f.suffix.lower() in _AUDIO_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(folder).parts)
                and f.is_file()):
            yield f


def _speaker_folders(root: Path) -> list[Path]:
    from dmlkit.data.image_folder import class_folders

    return class_folders(root)


def speaker_files(root: str | Path) -> dict[str, list[Path]]:
    """``{speaker: sorted WAV files}`` of ``root/<speaker>/**/*.wav`` (any case of
    ``.wav``, at any depth; hidden files and folders skipped): the files
    :func:`load_speaker_folder` reads, listed without reading them."""
    root = _checked_root(root)
    return {d.name: sorted(_speaker_wavs(d)) for d in _speaker_folders(root)}


def is_speaker_folder(root: str | Path) -> bool:
    """Whether some speaker folder of ``root`` holds a WAV file as
    :func:`speaker_files` lists them (stops at the first found)."""
    root = Path(root)
    return root.is_dir() and any(next(_speaker_wavs(d), None) is not None
                                 for d in _speaker_folders(root))


def _checked_root(root: str | Path) -> Path:
    root = Path(root)
    if root.is_file():
        raise ValueError(f"{root} is a file, not a folder of speaker sub-folders "
                         "(ROOT/<speaker>/*.wav); give the folder that holds one sub-folder "
                         "per speaker")
    if not root.is_dir():
        raise ValueError(f"speaker folder {root} does not exist")
    return root


def load_speaker_folder(
    root: str | Path, sample_rate: int = SAMPLE_RATE, *, trim: bool = True
) -> tuple[list[np.ndarray], np.ndarray, list[str], list[Path]]:
    """Load ``root/<speaker>/**/*.wav``.

    Returns
    -------
    waveforms : list of float32 arrays (T_i,)
    labels : int64 array (n,)
        Speaker index into ``speakers``.
    speakers : list of str
        Sorted speaker folder names.
    paths : list of Path

    Raises
    ------
    ValueError
        When no folder holds a ``.wav`` file, or some speaker folder holds none (it would
        be a speaker no item has).
    """
    root = _checked_root(root)
    found = speaker_files(root)
    speakers = list(found)
    if not any(found.values()):
        raise ValueError(f"no .wav files under {root}/<speaker>/")
    empty = [spk for spk in speakers if not found[spk]]
    if empty:  # a speaker without recordings: a class name no item has
        shown = first_few(root / spk for spk in empty)
        raise ValueError(f"{len(empty)} speaker folder(s) of {root} hold no .wav files "
                         f"({shown}); every sub-folder is a speaker: add its recordings or "
                         "remove the folder")
    waves, labels, paths = [], [], []
    for k, spk in enumerate(speakers):
        for f in found[spk]:
            waves.append(load_wav(f, sample_rate, trim=trim))
            labels.append(k)
            paths.append(f)
    return waves, np.asarray(labels, dtype=np.int64), speakers, paths


def crop_dataset(
    waveforms: list[np.ndarray], labels: np.ndarray, length: int, *, hop: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crops of every waveform: ``(crops (N, length), labels (N,), source index (N,))``."""
    xs, ys, src = [], [], []
    for i, (w, y) in enumerate(zip(waveforms, labels, strict=True)):
        c = crops(w, length, hop=hop)
        xs.append(c)
        ys.append(np.full(len(c), y, dtype=np.int64))
        src.append(np.full(len(c), i, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(src)


def check_crop_length(sizes: list[int], length: int, sample_rate: int, source: str) -> None:
    """Refuse crops of ``length`` samples longer than :data:`MAX_CROP_LOOPS` times the
    longest recording (of ``sizes`` samples; every crop would be the recordings looped),
    and warn when they are longer than most recordings (more than half), naming the
    fraction, the longest duration and a crop length that fits."""
    if not sizes:
        return
    seconds = np.asarray(sizes, dtype=np.float64) / sample_rate  # (n,)
    crop, longest = length / sample_rate, float(seconds.max())
    shorter = int((seconds < crop).sum())
    fit = max(MIN_SECONDS, float(np.floor(np.median(seconds) * 10) / 10))
    if crop > MAX_CROP_LOOPS * longest:
        raise ValueError(
            f"crop_seconds {crop:g} is {crop / longest:.0f}x the longest recording of "
            f"{source} ({longest:.3g} s); every crop would loop its recording over and "
            f"over: set crop_seconds to at most {fit:g} (the median duration)")
    if shorter > len(sizes) / 2:
        warnings.warn(
            f"crop_seconds {crop:g} is longer than {shorter} of {len(sizes)} recordings of "
            f"{source} ({shorter / len(sizes):.0%}; the longest is {longest:.3g} s), which are "
            f"looped to fill their crops; set crop_seconds to at most {fit:g} (the median "
            "duration)", UserWarning, stacklevel=3)


def load_audio_folder(
    root: str | Path, sample_rate: int = SAMPLE_RATE, crop_seconds: float = 2.0, *,
    trim: bool = True,
) -> ArrayDataset:
    """``root/<speaker>/**/*.wav`` as a labelled dataset of fixed-length crops.

    Every file is read, resampled to ``sample_rate`` and trimmed of silence
    (:func:`load_speaker_folder`), then cut into ``crop_seconds`` crops
    (:func:`crops`, no overlap). Items are the crops ``(N, round(crop_seconds *
    sample_rate))`` float32, labelled by speaker (``class_names``: the folder names), the
    input of :class:`~dmlkit.models.SpeakerEncoder`. This is the ``audio_folder`` data
    source of configs (``data: {name: audio_folder, path: ...}``).

    Crops shorter than :data:`MIN_SECONDS` (one analysis window) are refused before any
    file is read. Crops of more than :data:`MAX_CROP_SAMPLES` samples, or much longer than every
    recording, are refused, and crops longer than most recordings warned of
    (:func:`check_crop_length`).
    """
    from dmlkit.data.dataset import ArrayDataset

    if not 0 < crop_seconds < inf:  # (NaN too)
        raise ValueError(f"crop_seconds must be a finite number > 0, got {crop_seconds}")
    length = int(round(crop_seconds * sample_rate))
    if crop_seconds < MIN_SECONDS or length < 1:
        raise ValueError(
            f"data.crop_seconds {crop_seconds:g} at {sample_rate} Hz makes crops of {length} "
            f"samples, shorter than one {MIN_SECONDS * 1000:g} ms analysis window; set "
            f"data.crop_seconds to at least {MIN_SECONDS:g} (speaker models train on crops "
            "of a few seconds, e.g. 2)")
    if length > MAX_CROP_SAMPLES:
        raise ValueError(
            f"crop_seconds {crop_seconds:g} at {sample_rate} Hz makes crops of {length} "
            f"samples ({length * 4 / 2**20:.0f} MiB each), over the {MAX_CROP_SAMPLES} "
            f"({MAX_CROP_SAMPLES / sample_rate:.0f} s) a crop may hold; speaker models "
            "train on crops of a few seconds: set crop_seconds to e.g. 2")
    waves, labels, speakers, files = load_speaker_folder(root, sample_rate, trim=trim)
    check_crop_length([w.size for w in waves], length, sample_rate, str(root))
    x, y, source = crop_dataset(waves, labels, length)
    return ArrayDataset(x, y, speakers, [str(files[i]) for i in source])
