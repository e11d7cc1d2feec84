"""The lifecycle of an image row: its states and the named transitions between them.

Pure data, no database: :mod:`pdata_sync.catalog.images` applies these transitions, the
model-based test checks them, and docs/adr/0006-image-row-state-machine.md explains them.
A transition names the states it may leave; a row in any other state is refused with
:class:`IllegalTransition` (a bug, never silently "fixed").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ImageState(enum.StrEnum):
    PENDING = "pending"  # an upload of this key is under way (or was interrupted)
    ACCEPTED = "accepted"  # S3 accepted a body, but did not confirm what it stores
    VERIFIED = "verified"  # S3 confirmed these exact bytes at this key in this destination
    DRIFTED = "drifted"  # was verified; S3 was then seen not to hold those bytes
    RETIRED = "retired"  # no longer belongs: moved out of images/ (or never to be re-used)


PENDING, ACCEPTED, VERIFIED, DRIFTED, RETIRED = (
    ImageState.PENDING,
    ImageState.ACCEPTED,
    ImageState.VERIFIED,
    ImageState.DRIFTED,
    ImageState.RETIRED,
)
STATES = tuple(ImageState)
NO_ROW = None  # "leaves" may include it: the transition creates the row


class IllegalTransition(RuntimeError):
    """A transition was applied to a row in a state it does not leave."""


@dataclass(frozen=True)
class Transition:
    name: str
    leaves: frozenset[ImageState | None]
    enters: ImageState | None  # None: the state the row had before (RELEASE)
    meaning: str

    def check(self, key: str, state: ImageState | str | None) -> None:
        current = None if state is None else ImageState(state)
        if current not in self.leaves:
            raise IllegalTransition(
                f"catalog: {self.name} of {key} from state {current or 'no row'} "
                f"(allowed from {', '.join(sorted(s or 'no row' for s in self.leaves))})"
            )


BEGIN_UPLOAD = Transition(
    "begin_upload",
    frozenset({NO_ROW, *ImageState}),
    PENDING,
    "the key is about to be uploaded; the state it leaves is kept to be restored by release",
)
RELEASE = Transition(
    "release",
    frozenset({PENDING}),
    None,
    "the upload will not happen (bad input): the row gets back the state it had, or goes "
    "if it had none",
)
ACCEPT = Transition(
    "accept",
    frozenset({PENDING}),
    ACCEPTED,
    "S3 accepted the body (its checksum checked on receipt) but did not confirm it",
)
CONFIRM = Transition(
    "confirm",
    frozenset({PENDING}),
    VERIFIED,
    "S3 accepted the body and reported back the size and checksum of what it stores",
)
MATCH = Transition(
    "match",
    frozenset({PENDING}),
    VERIFIED,
    "S3 already holds these bytes (content comparison); nothing uploaded, the record of "
    "who uploaded them is kept",
)
RECONFIRM = Transition(
    "reconfirm",
    frozenset({VERIFIED, DRIFTED}),
    VERIFIED,
    "a listing shows the verified size and ETag at the key again",
)
CONTRADICT = Transition(
    "contradict",
    frozenset({VERIFIED, DRIFTED}),
    DRIFTED,
    "a listing (verify, or a sync's) shows the object missing or different",
)
RETIRE = Transition(
    "retire",
    frozenset({PENDING, VERIFIED, ACCEPTED, DRIFTED}),
    RETIRED,
    "the object no longer belongs (its patient, key or source went away) and was moved to "
    "retired/ after its replacement, if any, was verified",
)
TRANSITIONS = (BEGIN_UPLOAD, RELEASE, ACCEPT, CONFIRM, MATCH, RECONFIRM, CONTRADICT, RETIRE)
