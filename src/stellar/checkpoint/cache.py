"""Released files on this machine, found where Hugging Face tools put them, fetched by its rules.

A released file (a STELLAR checkpoint, the MaskGIT-VQGAN tokenizer, an MAE initialisation) is
looked up, in order, in our own folders (``cache_dir``, ``$STELLAR_HOME``, ``~/.cache/stellar``)
and then in the Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``): ``models--{org}--{name}/snapshots/{hash}/{file}``, the snapshot
``refs/main`` names first, else any snapshot holding the file. The cache is read through
``huggingface_hub`` when it is installed (``pip install "stellar-ssl[hub]"``) and by its
documented layout when it is not. A file found nowhere is downloaded with ``hf_hub_download``
when ``huggingface_hub`` is installed, unless ``HF_HUB_OFFLINE=1``, ``STELLAR_OFFLINE=1`` or
``download=False`` forbid it; otherwise the error lists every place searched and the command
that fetches the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from stellar.checkpoint.weights import WeightsNotFoundError

logger = logging.getLogger(__name__)

ENV_HOME = "STELLAR_HOME"
ENV_OFFLINE = "STELLAR_OFFLINE"
STELLAR_REPO = "microsoft/STELLAR"
TOKENIZER_REPO = "fun-research/TiTok"
TOKENIZER_FILE = "maskgit-vqgan-imagenet-f16-256.bin"
TOKENIZER_NAME = "maskgit-vqgan"
# huggingface_hub's reading of boolean environment variables
_TRUE = {"1", "on", "yes", "true"}


def local_dirs(cache_dir: str | Path | None = None) -> list[Path]:
    """Our own folders, searched first: ``cache_dir``, ``$STELLAR_HOME``, ``~/.cache/stellar``."""
    dirs = [Path(cache_dir).expanduser()] if cache_dir else []
    if os.environ.get(ENV_HOME):
        dirs.append(Path(os.environ[ENV_HOME]).expanduser())
    dirs.append(Path.home() / ".cache" / "stellar")
    return dirs


def hf_cache_dir() -> Path:
    """The hub cache: ``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def offline_reason(download: bool = True) -> str | None:
    """Why nothing may be downloaded now (None: downloading is allowed)."""
    if not download:
        return "download=False (--offline)"
    for env in ("HF_HUB_OFFLINE", ENV_OFFLINE):
        if os.environ.get(env, "").strip().lower() in _TRUE:
            return f"{env}={os.environ[env]}"
    return None


def _hub():
    """The ``huggingface_hub`` module, or None when it is not installed."""
    try:
        import huggingface_hub
    except ImportError:
        return None
    return huggingface_hub


def _repo_folder(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def hf_snapshots(repo_id: str) -> list[Path]:
    """The repository's snapshot folders in the cache, ``refs/main``'s first, then newest first."""
    folder = _repo_folder(repo_id)
    snapshots = folder / "snapshots"
    if not snapshots.is_dir():
        return []
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: -p.stat().st_mtime)
    ref = folder / "refs" / "main"
    if ref.is_file():
        main = snapshots / ref.read_text().strip()
        if main in found:
            found.remove(main)
            found.insert(0, main)
    return found


def hf_cached(repo_id: str, filename: str) -> Path | None:
    """``filename`` of ``repo_id`` in the hub cache (``refs/main``'s snapshot first), or None.

    The path is the snapshot's entry (a link into ``blobs/``), so the files of one snapshot
    sit beside each other as in the repository.
    """
    hub = _hub()
    if hub is not None:
        try:
            hit = hub.try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_cache_dir()))
        except Exception as err:  # noqa: BLE001 - a malformed cache falls back to our reading
            logger.debug("huggingface_hub could not read the cache for %s: %s", repo_id, err)
        else:
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    for snapshot in hf_snapshots(repo_id):
        if (snapshot / filename).is_file():
            return snapshot / filename
    return None


def fetch_command(repo_id: str, filenames: Sequence[str]) -> str:
    """The shell command that puts ``filenames`` of ``repo_id`` into the hub cache."""
    return f"hf download {repo_id} {' '.join(filenames)}"


def download(repo_id: str, filename: str, allow: bool = True) -> tuple[Path | None, str]:
    """Fetch ``filename`` with ``hf_hub_download``; ``(path, "")`` or ``(None, why not)``."""
    why = offline_reason(allow)
    if why is not None:
        return None, f"downloading is off ({why})"
    hub = _hub()
    if hub is None:
        return None, 'huggingface_hub is not installed (pip install "stellar-ssl[hub]")'
    logger.info("downloading %s from the Hugging Face repository %s", filename, repo_id)
    try:
        return Path(hub.hf_hub_download(repo_id, filename, cache_dir=str(hf_cache_dir()))), ""
    except Exception as err:  # noqa: BLE001 - no network, no such file, gated repo: reported
        return None, f"the download failed ({type(err).__name__}: {err})"


def not_found(what: str, repo_id: str, filenames: Sequence[str], tried: Iterable[str], why: str):
    """The FileNotFoundError for a file found nowhere: every place searched, the fetch command."""
    return WeightsNotFoundError(
        f"{what}: not on this machine. Searched: {'; '.join(tried)}. Not downloaded: {why}. "
        f"Fetch it with `{fetch_command(repo_id, filenames)}` (then load offline), or put the "
        f"file in one of those folders, set ${ENV_HOME}, or pass its path"
    )


def find_released(
    repo_id: str,
    filename: str,
    what: str,
    candidates: Iterable[Path] = (),
    companions: Sequence[str] = (),
    allow_download: bool = True,
) -> Path:
    """A released file: the first existing of ``candidates``, else the hub cache, else fetched.

    Args:
        repo_id: the Hugging Face repository (``org/name``).
        filename: the file inside it.
        what: how errors name the file (e.g. ``"the MaskGIT-VQGAN tokenizer"``).
        candidates: paths in our own folders, tried first, in order.
        companions: files of the same repository that must sit beside it (e.g. the model
            table ``config.json``); fetched with it when it is downloaded.
        allow_download: False forbids downloading (as ``HF_HUB_OFFLINE=1`` does).

    Raises:
        FileNotFoundError: listing every place searched and the command that fetches it.
    """
    tried = []
    for path in candidates:
        tried.append(str(path))
        if path.is_file():
            return path
    hit = hf_cached(repo_id, filename)
    tried.append(f"the Hugging Face cache {_repo_folder(repo_id)}/snapshots/*/{filename}")
    if hit is not None:
        for extra in companions:  # e.g. only the weights were fetched by hand
            if not (hit.parent / extra).is_file() and offline_reason(allow_download) is None:
                download(repo_id, extra, allow_download)
        return hit
    path, why = download(repo_id, filename, allow_download)
    if path is None:
        raise not_found(what, repo_id, [filename, *companions], tried, why)
    for extra in companions:
        got, why = download(repo_id, extra, allow_download)
        if got is None:
            logger.warning("could not fetch %s beside %s: %s", extra, filename, why)
    return path


def find_model_dir(
    repo_id: str, weight_files: Sequence[str], what: str, allow_download: bool = True
) -> Path:
    """The snapshot folder of an HF model repository: its ``config.json`` and weights.

    Used for model ids such as ``facebook/vit-mae-base``: the cached snapshot that holds
    ``config.json`` and one of ``weight_files`` (tried in order), else a download of them.

    Raises:
        FileNotFoundError: listing where it looked and the command that fetches it.
    """
    for snapshot in hf_snapshots(repo_id):
        if (snapshot / "config.json").is_file() and any(
            (snapshot / w).is_file() for w in weight_files
        ):
            return snapshot
    tried = [f"the Hugging Face cache {_repo_folder(repo_id)}/snapshots/*"]
    config, why = download(repo_id, "config.json", allow_download)
    if config is not None:
        for name in weight_files:
            weights, why = download(repo_id, name, allow_download)
            if weights is not None:
                return weights.parent
    raise not_found(what, repo_id, ["config.json", weight_files[0]], tried, why)


def resolve_tokenizer(
    spec: str | Path, cache_dir: str | Path | None = None, download: bool = True
) -> Path:
    """The MaskGIT-VQGAN weights file that ``spec`` names.

    ``"maskgit-vqgan"`` (or the bare file name ``maskgit-vqgan-imagenet-f16-256.bin`` that is
    not a file here) is TiTok's release: looked up in our folders, then the hub cache of
    ``fun-research/TiTok``, then fetched when allowed. Any other ``spec`` is a path, never
    downloaded.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if str(spec) in (TOKENIZER_NAME, TOKENIZER_FILE):
        return find_released(
            TOKENIZER_REPO,
            TOKENIZER_FILE,
            "the MaskGIT-VQGAN tokenizer",
            [d / TOKENIZER_FILE for d in local_dirs(cache_dir)],
            allow_download=download,
        )
    raise WeightsNotFoundError(
        f"MaskGIT-VQGAN weights not found at '{path}'. A path is never downloaded: pass the "
        f"local path of {TOKENIZER_FILE} (or a .safetensors with the same keys), or "
        f"'{TOKENIZER_NAME}' to find TiTok's release by name"
    )
