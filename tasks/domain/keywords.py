"""Classify an inbound SMS or WhatsApp reply as opt-out, opt-in, help or anything else."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from enum import StrEnum


class Keyword(StrEnum):
    """What an inbound reply asks for."""

    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"
    OTHER = "other"


# Whole-message keywords, as customers type them; matching ignores case, accents, spacing and punctuation.
# English is Twilio's default set (long codes and toll-free) plus REVOKE/OPTOUT (FCC 24-18 examples).
# A bare local "yes" (ja, oui, sí, ya, có) is no opt-in: unlike Twilio's English YES, a one-word answer to a
# reminder is more likely an answer than a request to resume messages.
# KÜNDIGEN / RÉSILIER are absent: in a renewal reply they mean "cancel my contract", which staff must see.
KEYWORDS: Mapping[str, Mapping[Keyword, tuple[str, ...]]] = {
    "en": {
        Keyword.OPT_OUT: (
            "STOP",
            "STOPALL",
            "UNSUBSCRIBE",
            "CANCEL",
            "END",
            "QUIT",
            "REVOKE",
            "OPT OUT",
            "OPTOUT",
            "OPT-OUT",
        ),
        Keyword.OPT_IN: ("START", "YES", "UNSTOP"),
        Keyword.HELP: ("HELP", "INFO"),
    },
    "de": {
        Keyword.OPT_OUT: ("STOPP", "ABMELDEN", "ABBESTELLEN", "AUSTRAGEN", "BEENDEN", "ENDE"),
        Keyword.OPT_IN: ("ANMELDEN", "STARTEN"),
        Keyword.HELP: ("HILFE",),
    },
    "fr": {
        Keyword.OPT_OUT: (
            "STOP",
            "ARRET",
            "ARRÊT",
            "STOP SMS",
            "FIN",
            "DESABONNER",
            "DÉSABONNER",
            "DESINSCRIRE",
            "DÉSINSCRIRE",
            "DÉSINSCRIPTION",
        ),
        Keyword.OPT_IN: ("DEMARRER", "DÉMARRER", "REPRENDRE"),
        Keyword.HELP: ("AIDE",),
    },
    "es": {
        Keyword.OPT_OUT: ("BAJA", "PARAR", "CANCELAR", "DETENER", "ALTO", "FIN", "DARSE DE BAJA"),
        Keyword.OPT_IN: ("ALTA", "COMENZAR", "REANUDAR"),
        Keyword.HELP: ("AYUDA",),
    },
    "id": {
        Keyword.OPT_OUT: ("BERHENTI", "STOP", "BATAL", "HENTIKAN", "BERHENTI BERLANGGANAN"),
        Keyword.OPT_IN: ("MULAI", "LANJUTKAN"),
        Keyword.HELP: ("BANTUAN", "BANTU"),
    },
    "vi": {
        # TC ("từ chối") is the refusal keyword Vietnam's advertising rules (Decree 91/2020) prescribe.
        Keyword.OPT_OUT: ("DUNG", "DỪNG", "HUY", "HỦY", "TC", "TỪ CHỐI", "HỦY ĐĂNG KÝ", "NGỪNG"),
        Keyword.OPT_IN: ("BẮT ĐẦU", "ĐĂNG KÝ"),
        Keyword.HELP: ("TRỢ GIÚP", "HƯỚNG DẪN"),
    },
}

# Free-text opt-outs: the FCC (24-18) requires honouring revocation "by any reasonable means", so a reply that
# contains one of these word sequences opts out even though Twilio's own keyword filter ignores it.
OPT_OUT_PHRASES: Mapping[str, tuple[str, ...]] = {
    "en": (
        "stop texting",
        "stop messaging",
        "stop sending",
        "stop contacting",
        "stop calling",
        "please stop",
        "stop please",
        "stop it",
        "unsubscribe me",
        "remove me",
        "take me off",
        "opt me out",
        "don't text me",
        "do not text me",
        "don't message me",
        "do not message me",
        "don't contact me",
        "do not contact me",
        "no more texts",
        "no more messages",
        "leave me alone",
    ),
    "de": (
        "keine sms mehr",
        "keine nachrichten mehr",
        "nicht mehr kontaktieren",
        "nicht mehr schreiben",
        "bitte abmelden",
        "abmelden bitte",
        "hört auf",
        "hören sie auf",
    ),
    "fr": (
        "ne plus recevoir",
        "arrêtez de m'envoyer",
        "ne m'envoyez plus",
        "plus de sms",
        "plus de messages",
        "désabonnez-moi",
        "stop merci",
    ),
    "es": (
        "no me envíen más",
        "dejen de enviarme",
        "dejen de escribirme",
        "no quiero recibir",
        "darme de baja",
        "baja por favor",
    ),
    "id": ("jangan kirim lagi", "berhenti kirim", "tolong berhenti", "jangan hubungi saya", "stop kirim"),
    "vi": ("đừng nhắn tin", "không nhắn tin nữa", "dừng gửi", "ngừng gửi", "không muốn nhận"),
}

_APOSTROPHES = re.compile(r"['\u2019\u02bc`´]")
_NON_WORD = re.compile(r"[\W_]+")


def normalise_reply(text: str) -> str:
    """Return `text` lower-cased, without accents, apostrophes or punctuation, words joined by one space."""
    # Vietnamese đ has no decomposition, so NFKD alone would keep it.
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    return " ".join(_NON_WORD.sub(" ", _APOSTROPHES.sub("", stripped)).split())


def _index() -> dict[str, Keyword]:
    index: dict[str, Keyword] = {}
    for by_kind in KEYWORDS.values():
        for kind, words in by_kind.items():
            for word in words:
                key = normalise_reply(word)
                if index.setdefault(key, kind) is not kind:
                    raise ValueError(f"keyword {word!r} is both {index[key]} and {kind}")
    return index


_KEYWORDS = _index()
_PHRASES = tuple(sorted({normalise_reply(p) for ps in OPT_OUT_PHRASES.values() for p in ps}))


def classify_keyword(body: str) -> Keyword:
    """Return what an inbound reply asks for: a whole-message keyword, or an opt-out phrase in free text."""
    text = normalise_reply(body)
    if not text:
        return Keyword.OTHER
    if text in _KEYWORDS:
        return _KEYWORDS[text]
    padded = f" {text} "
    if any(f" {phrase} " in padded for phrase in _PHRASES):
        return Keyword.OPT_OUT
    return Keyword.OTHER
