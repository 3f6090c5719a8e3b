"""The client configuration file Skiff writes (``admin.conf`` of a founding
server, ``~/.skiff/config`` of ``skiff dev``): the servers, the cluster CA,
and the client's certificate and key, as YAML. Read here without a YAML
library: the file is always the shape Skiff writes (``servers:`` as a list,
``ca``/``cert``/``key`` as ``|`` blocks).
"""

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

# The name every server's certificate carries.
SERVER_NAME = "server.skiff"


@dataclass
class ClientConfig:
    servers: List[str] = field(default_factory=list)
    ca: Optional[bytes] = None
    cert: Optional[bytes] = None
    key: Optional[bytes] = None
    source: Optional[str] = None

    def __repr__(self) -> str:  # never the key
        return f"ClientConfig(servers={self.servers!r}, source={self.source!r})"


def parse(text: str, source: str = "<config>") -> ClientConfig:
    """Parses a configuration file's text; ``ValueError`` names the line."""
    blocks: Dict[str, List[str]] = {}
    servers: List[str] = []
    key: Optional[str] = None
    mode = ""
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#") and mode != "block":
            continue
        if raw.startswith((" ", "\t")):
            if mode == "block" and key is not None:
                blocks[key].append(line.strip())
            elif mode == "list" and line.strip().startswith("- "):
                servers.append(line.strip()[2:].strip())
            else:
                raise ValueError(f"{source}:{n}: unexpected indented line")
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"{source}:{n}: expected KEY: VALUE")
        name, value = name.strip(), value.strip()
        if name == "servers":
            mode, key = "list", None
            if value.startswith("[") and value.endswith("]"):
                servers += [s.strip() for s in value[1:-1].split(",") if s.strip()]
        elif name in ("ca", "cert", "key"):
            if value != "|":
                raise ValueError(f"{source}:{n}: {name} must be a PEM block (`{name}: |`)")
            mode, key = "block", name
            blocks[name] = []
        else:
            raise ValueError(f"{source}:{n}: unknown field {name!r}")
    pem = {k: ("\n".join(v) + "\n").encode() for k, v in blocks.items()}
    cfg = ClientConfig(servers, pem.get("ca"), pem.get("cert"), pem.get("key"), source)
    if (cfg.cert is None) != (cfg.key is None):
        raise ValueError(f"{source}: cert and key: give both or neither")
    return cfg


def load(path: Optional[str] = None) -> Optional[ClientConfig]:
    """Reads ``path``, else ``$SKIFF_CONFIG``, else ``~/.skiff/config`` when
    it exists; ``None`` when there is none."""
    path = path or os.environ.get("SKIFF_CONFIG")
    if not path:
        default = os.path.expanduser("~/.skiff/config")
        if not os.path.exists(default):
            return None
        path = default
    with open(path, encoding="utf-8") as f:
        return parse(f.read(), path)
