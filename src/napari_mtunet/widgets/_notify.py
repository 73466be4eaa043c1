"""Notifications: the one place the widgets tell the user something (tests record these two functions)."""

from __future__ import annotations


def notify_error(message: str) -> None:
    """Show an error notification (never a traceback: ``message`` is already the whole story)."""
    from napari.utils.notifications import show_error

    show_error(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def error_message(exc: BaseException, context: str = "") -> str:
    """The core's clear message, with advice for the failures users hit most.

    Errors of jobs come from the compute process as :class:`~napari_mtunet.compute.RemoteError` (the message
    and the names of the original classes), so the advice is chosen by class name.
    """
    names = _class_names(exc)
    msg = str(exc).strip() or str(getattr(exc, "type_name", "")) or type(exc).__name__
    low = msg.lower()
    if ("MemoryError" in names or "OutOfMemoryError" in names or "out of memory" in low) \
            and "reduce the batch size" not in low:
        msg = (
            f"Out of memory ({msg}). Reduce the batch size or the image size, "
            "or predict big images in tiles with a smaller tile size."
        )
    elif ({"OSError", "ConnectionError"} & names) and ("download" in low or "url" in low or "connect" in low):
        msg = (
            f"{msg}. Pretrained encoder weights could not be downloaded (offline?). Choose encoder "
            "weights 'none' or a local weights file."
        )
    elif not ({"ValueError", "RuntimeError", "OSError", "KeyError"} & names):
        msg = f"{getattr(exc, 'type_name', type(exc).__name__)}: {msg}"
    return f"{context}: {msg}" if context else msg


def _class_names(exc: BaseException) -> set[str]:
    bases = getattr(exc, "bases", None)
    if bases:  # a RemoteError: the original exception's classes
        return set(bases)
    return {c.__name__ for c in type(exc).__mro__}
