"""Platform connectors. Each platform is a folder with client.py, connector.py and fake.py.

The registry maps the `platform:` key of the config to the dotted paths of the classes, so
nothing is imported until a config names the platform.
"""

from __future__ import annotations

import importlib
from typing import Any

PLATFORMS: tuple[str, ...] = ("impactly", "vortask", "agentkanban", "runs", "squads")

_FAKES = {
    "impactly": "connectors.impactly.fake:ImpactlyFake",
    "vortask": "connectors.vortask.fake:VortaskFake",
    "agentkanban": "connectors.agentkanban.fake:AgentKanbanFake",
    "runs": "connectors.runs.fake:RunsFake",
    "squads": "connectors.squads.fake:SquadsFake",
}


_CONNECTORS = {
    "impactly": "connectors.impactly.connector:ImpactlyConnector",
    "vortask": "connectors.vortask.connector:VortaskConnector",
    "agentkanban": "connectors.agentkanban.connector:AgentKanbanConnector",
    "runs": "connectors.runs.connector:RunsConnector",
    "squads": "connectors.squads.connector:SquadsConnector",
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def fake_class(platform: str) -> Any:
    """The fake server class of a platform (see connectors/fakekit.py)."""
    if platform not in _FAKES:
        raise KeyError(f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}")
    return _load(_FAKES[platform])


def connector_class(platform: str) -> Any:
    """The connector class of a platform (see connectors/base.py for the protocol)."""
    if platform not in _CONNECTORS:
        raise KeyError(f"unknown platform {platform!r}; known: {', '.join(PLATFORMS)}")
    return _load(_CONNECTORS[platform])
