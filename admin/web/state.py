"""What every request handler shares: the settings and the store, and the `Context` of the acting user."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass

from starlette.requests import Request

from admin.context import Context
from relay.core.models import User
from relay.core.settings import Settings
from relay.core.store import Store


@dataclass(frozen=True)
class WebState:
    settings: Settings
    store: Store


def web_state(request: Request) -> WebState:
    state = request.app.state.web
    assert isinstance(state, WebState)
    return state


def context_for(state: WebState, user: User) -> Context:
    """The services' entry for `user`: the same `Context` a CLI command gets with `--as USER`."""
    # Nothing is printed: the services' answers are returned; notices go to the server's log.
    return Context(settings=state.settings, store=state.store, actor_name=user.name,
                   json_output=True, out=io.StringIO(), err=sys.stderr)
