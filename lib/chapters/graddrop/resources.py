"""A published resource measure per language: its size in CC-100, the corpus XLM-R was
pretrained on (multilingual-e5 starts from XLM-R).

Source: Conneau et al. (2020), "Unsupervised Cross-lingual Representation Learning at Scale",
ACL 2020, arXiv 1911.02116, Appendix A, Table 6 ("Languages and statistics of the CC-100
corpus"): size in GiB and tokens in millions (the Chinese row is Simplified Chinese). Read
from the transcription of that table in github.com/mayhewsw/multilingual-data-stats
(cc-100/cc-100.csv); the token counts of some scripts without spaces (Chinese among them) are
doubtful there, so the chapter uses the size in GiB.
"""

from __future__ import annotations

import pandas as pd

SOURCE = "Conneau et al. 2020 (XLM-R), arXiv 1911.02116, Appendix A, Table 6 (CC-100)"

# language: (size in GiB, tokens in millions)
CC100 = {
    "en": (300.8, 55608),
    "ru": (278.0, 23408),
    "de": (66.6, 10297),
    "fr": (56.8, 9780),
    "fi": (54.3, 6730),
    "es": (53.3, 9374),
    "pt": (49.1, 8405),
    "zh": (46.9, 259),
    "it": (30.2, 4983),
    "nl": (29.3, 5025),
    "ar": (28.0, 2869),
    "tr": (20.9, 2736),
    "hi": (20.2, 1715),
}


def cc100_table() -> pd.DataFrame:
    """CC-100 size (GiB) and tokens (millions) by language."""
    return pd.DataFrame(
        [(k, g, t) for k, (g, t) in CC100.items()], columns=["lang", "gib", "tokens_m"]
    ).set_index("lang")
