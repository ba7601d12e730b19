"""dvpnd: the dvpn WireGuard hub/spoke daemon and dvpnctl."""

from importlib import metadata as _metadata


def _version() -> str:
    """The one version, pyproject.toml's: from the installed package's metadata, or (a source
    checkout run without installing it) from pyproject.toml itself."""
    try:
        return _metadata.version("dvpnd")
    except _metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        try:
            with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
                return str(tomllib.load(f)["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


__version__ = _version()
