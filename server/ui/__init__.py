"""The web dashboard at ``/ui``: static files shipped in the package, no CDN, no build step.

The page and its assets carry no data and are served without a token; everything the
dashboard shows it fetches from the control API with the admin token the user signs in
with (kept in the tab's sessionStorage), so the dashboard is exactly as private as the API.
Only the files named in ``ASSETS`` are served, with a Content-Security-Policy that lets the
page load nothing but them and talk to nothing but this coordinator.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Response
from fastapi.responses import RedirectResponse

from bitfleet.server.errors import NotFound

ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot-LICENSE.txt": "text/plain; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(prefix="/ui", include_in_schema=False)


def _static(name: str) -> bytes:
    return files("bitfleet.server.ui").joinpath("static").joinpath(name).read_bytes()


@router.get("")
def root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=308)


@router.get("/")
def index() -> Response:
    return Response(_static("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/assets/{name}")
def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard file {name!r}")
    return Response(_static(name), media_type=media_type, headers=HEADERS)
