"""Constants and helpers the browser tests share."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 375, "height": 812}
TICK_INTERVAL_SECONDS = 0.5
# Playwright waits (milliseconds): generous, since they only bound a wait for an event.
WAIT_MS = 20_000


POLL_TRIGGER = re.compile(r"\bevery (\d+(?:\.\d+)?)(ms|s)\b")
# A poll still scheduled comes one interval after the last; a busy machine fires it this late.
TIMER_SLACK_MS = 500


def poll_interval_ms(page, selector: str) -> float:
    """How often the element polls, read from its `hx-trigger="every ..."` as htmx reads it."""
    trigger = page.get_attribute(selector, "hx-trigger") or ""
    match = POLL_TRIGGER.search(trigger)
    assert match, f"{selector} does not poll: hx-trigger={trigger!r}"
    return float(match[1]) * (1 if match[2] == "ms" else 1000)


def assert_no_request_within(page, ms: float, predicate: Callable, what: str) -> None:
    """Fail if the page sends a request matching `predicate` in the next `ms` milliseconds."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    try:
        request = page.wait_for_event("request", predicate=predicate, timeout=ms)
    except PlaywrightTimeoutError:
        return
    raise AssertionError(f"{what}: {request.method} {request.url}")


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# --- what a screen shows -----------------------------------------------------------------------

# The relative luminance (0 black .. 1 white) of the first opaque background at or above an
# element, or of its text colour.
_LUMINANCE_JS = """([selector, property]) => {
  // Any computed colour (rgb(), color(srgb ...) from color-mix) as bytes, via a canvas.
  const probe = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
  const rgba = (colour) => {
    probe.clearRect(0, 0, 1, 1);
    probe.fillStyle = colour;
    probe.fillRect(0, 0, 1, 1);
    return probe.getImageData(0, 0, 1, 1).data;
  };
  let element = document.querySelector(selector);
  let colour = rgba(getComputedStyle(element)[property]);
  while (property === "backgroundColor" && colour[3] === 0 && element.parentElement) {
    element = element.parentElement;
    colour = rgba(getComputedStyle(element).backgroundColor);
  }
  const [r, g, b] = Array.from(colour.slice(0, 3), (c) => {
    c /= 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}"""

# Opaque pixels of a canvas in the colour of a CSS variable (the chart's line), counted.
_PAINTED_JS = """([selector, variable]) => {
  const canvas = document.querySelector(selector);
  const probe = document.createElement("canvas").getContext("2d");
  probe.fillStyle = getComputedStyle(document.documentElement).getPropertyValue(variable).trim();
  probe.fillRect(0, 0, 1, 1);
  const [r, g, b] = probe.getImageData(0, 0, 1, 1).data;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 0; i < data.length; i += 4) {
    const near = Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b);
    if (data[i + 3] >= 200 && near <= 60) count += 1;
  }
  return count;
}"""


# Luminance bounds of a theme's colours: WCAG's 4.5:1 contrast needs about this far apart.
DARK, LIGHT = 0.1, 0.5


def luminance(page, selector: str, prop: str = "backgroundColor") -> float:
    """How light the element's background (or `prop="color"`: its text) is, 0 to 1."""
    return page.evaluate(_LUMINANCE_JS, [selector, prop])


def assert_theme(page, color_scheme: str, selector: str = "body") -> None:
    """The element shows the scheme's colours: dark text on a light background, or the
    reverse, with the contrast to read it."""
    background, text = luminance(page, selector), luminance(page, selector, "color")
    if color_scheme == "dark":
        assert background < DARK and text > LIGHT, (selector, background, text)
    else:
        assert background > LIGHT and text < DARK, (selector, background, text)


def painted_pixels(page, canvas: str, colour_variable: str) -> int:
    """How many pixels of `canvas` are drawn in the colour of `colour_variable`."""
    return page.evaluate(_PAINTED_JS, [canvas, colour_variable])


def scrolls_sideways(page) -> bool:
    """Whether the page, or content clipped by the body, is wider than the viewport."""
    return page.evaluate(
        "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        " > window.innerWidth"
    )
