"""The judge's side of calls into the sample: stand-ins for the sample's functions and objects.

A ``RemoteObject`` is a judge-made object naming something that lives in the sample's
interpreter (a function, a class, an instance). The tests may call it, read an attribute
of it, or pass it back as an argument; each of these is one request to the sample, and
what comes back is plain data (``plain_data``) or another handle. It cannot be compared,
hashed, tested for truth, iterated or measured: every such use raises ``NotPlainData``,
so an object of the sample's making can never decide whether an assertion holds.
"""

from __future__ import annotations

import builtins

from glm5_jax.eval.sandbox_child import plain_data
from glm5_jax.eval.sandbox_child.framing import encode_frame, read_frame, write_all

MAX_REPLY_BYTES = 64 << 20


class NotPlainData(BaseException):
    """A value from the sample that is not data was used as data (compared, tested...).

    Like every error of the boundary it is not an ``Exception``: a test's own
    ``except Exception`` (or ``except TypeError``) cannot swallow it and pass."""


class CandidateError(Exception):
    """The sample's code raised an exception that has no builtin counterpart here."""


class CandidateExit(BaseException):
    """The sample's code raised SystemExit, KeyboardInterrupt or GeneratorExit."""


class CandidateGone(BaseException):
    """The sample's process ended or broke the call protocol: nothing more can be asked."""


class CallChannel:
    """Blocking request/reply over the two pipes to the runner; one call at a time."""

    def __init__(self, call_fd: int, reply_fd: int) -> None:
        self.call_fd = call_fd
        self.reply_fd = reply_fd
        self.broken = ""

    def request(self, message: tuple) -> object:
        """Send ``message`` (plain data and handles), return the decoded reply."""
        if self.broken:
            raise CandidateGone(self.broken)
        try:
            text = plain_data.encode(message, self._handle_id)
        except plain_data.PlainDataError as exc:
            raise NotPlainData(f"cannot pass this argument to the sample: {exc}") from None
        try:
            write_all(self.call_fd, encode_frame(text.encode("utf-8", "surrogatepass")))
        except OSError as exc:
            self.broken = f"the sample's process broke the call channel: {exc}"
            raise CandidateGone(self.broken) from None
        return self.read_message("the sample's process ended during a call")

    def decode(self, payload: bytes) -> object:
        try:
            return plain_data.decode(payload, self._make_remote)
        except plain_data.PlainDataError as exc:
            raise NotPlainData(f"the sample sent {exc}") from None

    def read_message(self, if_ended: str = "the sample's process ended before naming its "
                     "functions") -> object:
        """The runner's next frame, decoded: a reply, or first its exported names."""
        try:
            payload = read_frame(self.reply_fd, MAX_REPLY_BYTES)
        except (OSError, ValueError, EOFError) as exc:
            payload, self.broken = None, f"the sample's process broke the call channel: {exc}"
        if payload is None:
            self.broken = self.broken or if_ended
            raise CandidateGone(self.broken)
        return self.decode(payload)

    def _handle_id(self, value: object) -> int:
        if type(value) is RemoteObject and object.__getattribute__(value, "_channel") is self:
            return object.__getattribute__(value, "_handle")
        raise plain_data.PlainDataError(f"a {type(value).__name__} is neither plain data nor "
                                        "an object the sample returned")

    def _make_remote(self, handle: int, type_name: str) -> "RemoteObject":
        return RemoteObject(self, handle, type_name)


def reraise_from_sample(names: list, message: str) -> BaseException:
    """The judge-side exception for one the sample raised: the first builtin exception
    class in its MRO (so ``except ValueError`` still catches a subclass), else a
    ``CandidateError``; exits become ``CandidateExit``."""
    for name in names:
        if not isinstance(name, str) or name.startswith("_"):
            continue
        kind = getattr(builtins, name, None)
        if not (isinstance(kind, type) and issubclass(kind, BaseException)):
            continue
        if not issubclass(kind, Exception):
            return CandidateExit(f"{name}: {message}")
        try:
            return kind(message)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            return CandidateError(f"{name}: {message}")
    return CandidateError(f"{names[0] if names else 'exception'}: {message}")


def _refuse(operation: str):
    def refuse(self, *args, **kwargs):
        name = object.__getattribute__(self, "_type_name")
        raise NotPlainData(f"the sample returned a {name} object, which is not plain data; "
                           f"it cannot be used with {operation} (only called, passed back, "
                           "or asked for an attribute)")
    return refuse


class RemoteObject:
    """A handle on an object in the sample; see the module docstring."""

    __slots__ = ("_channel", "_handle", "_type_name")

    def __init__(self, channel: CallChannel, handle: int, type_name: str) -> None:
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_handle", handle)
        object.__setattr__(self, "_type_name", type_name)

    def __call__(self, *args, **kwargs):
        return _call(self, "call", args, kwargs)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return _call(self, "getattr", name, None)

    def __repr__(self) -> str:
        return f"<{object.__getattribute__(self, '_type_name')} in the sample>"

    __str__ = __repr__
    __setattr__ = _refuse("attribute assignment")
    __delattr__ = _refuse("attribute deletion")
    __eq__ = _refuse("==")
    __ne__ = _refuse("!=")
    __lt__ = _refuse("<")
    __le__ = _refuse("<=")
    __gt__ = _refuse(">")
    __ge__ = _refuse(">=")
    __hash__ = _refuse("hash()")
    __bool__ = _refuse("a truth test")
    __len__ = _refuse("len()")
    __iter__ = _refuse("iteration")
    __contains__ = _refuse("in")
    __getitem__ = _refuse("indexing")
    __index__ = _refuse("use as an integer")
    __int__ = _refuse("int()")
    __float__ = _refuse("float()")
    __format__ = _refuse("format()")


def _call(remote: RemoteObject, operation: str, first: object, second: object) -> object:
    channel = object.__getattribute__(remote, "_channel")
    handle = object.__getattribute__(remote, "_handle")
    message = (operation, remote, first, second if second is not None else {})
    reply = channel.request(message)
    if type(reply) is tuple and len(reply) == 2 and reply[0] == "ok":
        return reply[1]
    if type(reply) is tuple and len(reply) == 3 and reply[0] == "raised" \
            and type(reply[1]) is list and type(reply[2]) is str:
        raise reraise_from_sample(reply[1], reply[2][:2000])
    if type(reply) is tuple and len(reply) == 2 and reply[0] == "not plain" \
            and type(reply[1]) is str:
        raise NotPlainData(f"the sample's return value cannot cross: {reply[1][:500]}")
    channel.broken = f"malformed reply to a call of handle {handle}"
    raise CandidateGone(channel.broken)
