"""The connectors a config names, built: what the daemon, `plan` and `discover` all run on."""

from __future__ import annotations

from typing import Any

import connectors as registry
from bridge import mapping as mapping_mod
from bridge import metrics
from bridge.config import Config
from connectors.base import Connector, ConnectorSettings, PeopleMap


def build_connectors(cfg: Config, *, transport: Any = None) -> dict[str, Connector]:
    out: dict[str, Connector] = {}
    for name, c in cfg.connectors.items():
        override = c.mapping.model_dump(exclude_none=True) if c.mapping else None
        people = {key: p.ids[name] for key, p in cfg.people.items() if name in p.ids}
        settings = ConnectorSettings(
            name=name,
            platform=c.platform,
            base_url=c.base_url,
            mapping=mapping_mod.load(c.platform, override),
            people=PeopleMap(name, people),
            token=c.token.get_secret_value() if c.token else None,
            client_id=c.client_id,
            client_secret=c.client_secret.get_secret_value() if c.client_secret else None,
            webhook_secret=c.webhook_secret.get_secret_value() if c.webhook_secret else None,
            mcp_url=c.mcp_url,
            timeout=c.timeout,
            deadline=c.deadline,
            max_response_bytes=c.max_response_bytes,
            rate_limit=c.rate_limit,
            max_retries=c.max_retries,
            transport=transport,
            other_secrets=tuple(cfg.connector_secrets()),
        )
        out[name] = registry.connector_class(c.platform)(settings, observer=metrics.observe_request)
    return out
