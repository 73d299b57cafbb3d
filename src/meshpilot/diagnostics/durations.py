"""Ages as kubectl and istioctl print them: `45s`, `2m5s`, `3h`, `2d4h`.

Precision falls as the age grows, the way kubectl's HumanDuration does: seconds are shown up to
ten minutes, minutes up to eight hours, hours up to eight days.
"""

from __future__ import annotations


def human_duration(seconds: float) -> str:
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"
