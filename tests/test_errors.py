"""Every exception the project raises survives a pickle round trip (Ray sends a trial's
exception from the worker to the driver that way) with its class, message and fields."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from pathlib import Path

import pytest

from trainer.data.errors import AudioDecodeError, MissingAudioError, ProtocolFormatError
from trainer.step import NonFiniteLossError

PACKAGES = ("trainer", "orchestrator", "search_spaces")

# One instance of each class whose __init__ is not (message): built as the code raises it.
BUILT = {
    ProtocolFormatError: lambda: ProtocolFormatError(Path("/c/p.txt"), 3, "5 columns", "a b"),
    MissingAudioError: lambda: MissingAudioError(Path("/c/p.txt"), [Path("/c/a.flac")], 10),
    AudioDecodeError: lambda: AudioDecodeError(Path("/c/a.flac"), "truncated body"),
    NonFiniteLossError: lambda: NonFiniteLossError("loss is nan at step 7", step=7),
}


def _project_exceptions() -> list[type[BaseException]]:
    found = []
    for name in PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            if info.name.endswith("__main__"):  # running it is what importing it does
                continue
            module = importlib.import_module(info.name)
            found += [
                cls
                for cls in vars(module).values()
                if inspect.isclass(cls)
                and issubclass(cls, BaseException)
                and cls.__module__ == module.__name__
            ]
    return found


def _instance(cls: type[BaseException]) -> BaseException:
    if cls in BUILT:
        return BUILT[cls]()
    # the rest take their message alone; a new class with other arguments fails here
    return cls("the message names the key at fault")


@pytest.mark.parametrize("cls", _project_exceptions(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_exception_round_trips_with_its_message_and_fields(cls: type[BaseException]) -> None:
    err = _instance(cls)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == str(err) and back.args == err.args
    assert vars(back) == vars(err)


def test_the_audio_error_names_its_file_after_the_trip() -> None:
    back = pickle.loads(pickle.dumps(AudioDecodeError(Path("/c/a.flac"), "truncated body")))
    assert back.path == Path("/c/a.flac")
    assert str(back) == "cannot decode audio file /c/a.flac: truncated body"
    assert isinstance(back, ValueError)  # callers still catch it as before


def test_every_class_with_its_own_arguments_is_covered() -> None:
    """A class whose __init__ takes more than a message must be listed in BUILT."""
    for cls in _project_exceptions():
        params = list(inspect.signature(cls.__init__).parameters)
        if params not in (["self", "args", "kwargs"],):
            assert cls in BUILT, f"{cls.__name__}{inspect.signature(cls.__init__)} not in BUILT"
