"""Shared emotion vocabulary and the documented mapping of every dataset's labels onto it.

All loaders map their own class names / ids onto :data:`EMOTIONS` (FER+ order). A
:class:`~occstudy.data.faceset.FaceSet` stores labels as indices into its ``classes`` tuple,
which is :data:`EMOTIONS7` (no contempt) or :data:`EMOTIONS`.

Mappings (dataset label -> vocabulary name):

* FER2013 folders: ``angry->anger, disgust, fear, happy->happiness, neutral, sad->sadness,
  surprise``.
* FER2013 csv ids: ``0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral``.
* FER+ votes: ``neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
  unknown, NF`` (the first eight are exactly :data:`EMOTIONS`).
* RAF-DB ids: ``1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral``
  (the Occlusion-/Pose-RAF-DB lists use the same order, 0-based).
* AffectNet ids: ``0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger,
  7 Contempt`` (8 None, 9 Uncertain, 10 No-Face are not emotions and are dropped).
* CK+48 folders: ``anger, contempt, disgust, fear, happy->happiness, sadness, surprise``.
"""

from __future__ import annotations

from .errors import DataError

EMOTIONS: tuple[str, ...] = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
EMOTIONS7: tuple[str, ...] = EMOTIONS[:7]

FER2013_FOLDERS: dict[str, str] = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "neutral": "neutral",
    "sad": "sadness",
    "surprise": "surprise",
}
FER2013_CSV_IDS: tuple[str, ...] = (
    "anger",
    "disgust",
    "fear",
    "happiness",
    "sadness",
    "surprise",
    "neutral",
)
FERPLUS_VOTE_COLUMNS: tuple[str, ...] = EMOTIONS + ("unknown", "NF")
RAFDB_IDS: dict[int, str] = {
    1: "surprise",
    2: "fear",
    3: "disgust",
    4: "happiness",
    5: "sadness",
    6: "anger",
    7: "neutral",
}
AFFECTNET_IDS: dict[int, str] = {
    0: "neutral",
    1: "happiness",
    2: "sadness",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "anger",
    7: "contempt",
}
AFFECTNET_NON_EMOTION: dict[int, str] = {8: "none", 9: "uncertain", 10: "no-face"}
CKPLUS_FOLDERS: dict[str, str] = {
    "anger": "anger",
    "contempt": "contempt",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "sadness": "sadness",
    "surprise": "surprise",
    # Some CK+ exports also carry the neutral first frames.
    "neutral": "neutral",
}

# Spellings seen in class-folder releases (FED-RO, re-packaged FER sets); all map to EMOTIONS.
FOLDER_SYNONYMS: dict[str, str] = {
    **{e: e for e in EMOTIONS},
    **FER2013_FOLDERS,
    "angry": "anger",
    "happy": "happiness",
    "sad": "sadness",
    "surprised": "surprise",
    "fearful": "fear",
    "disgusted": "disgust",
}


def class_index(name: str, classes: tuple[str, ...], *, where: str) -> int:
    """Index of a vocabulary name in ``classes``.

    Args:
        name: Vocabulary name, e.g. ``"happiness"``.
        classes: The label space's class tuple.
        where: What is being parsed (file or field), for the error message.

    Returns:
        The position of ``name`` in ``classes``.

    Raises:
        DataError: If ``name`` is not one of ``classes``.
    """
    try:
        return classes.index(name)
    except ValueError:
        raise DataError(f"{where}: class {name!r} is not one of {list(classes)}") from None
