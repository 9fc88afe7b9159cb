"""Trimming a reply: keep exactly what the person wrote, drop quoted history and signatures.

Line-based rules that follow mail-client conventions and languages (attribution lines,
Outlook header blocks, separators, signatures, mobile footers), never a single test fixture.

Speed matters (the trimmer runs on every inbound message and in bulk re-parses): each line
gets at most a couple of cheap string tests, and the costly rules run only on the few lines
those tests let through (a line ending in ":" may end an attribution, a line starting with
"-", "_", a digit or a known keyword may be a separator, header or signature).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --------------------------------------------------------------------------- trimming

# The most text of one reply that is read (decoded, trimmed, extracted); the rest of a longer
# body (a 25 MB paste) is not. A person's answer to a check-in is a few thousand characters.
MAX_REPLY_CHARS = 1_000_000

# Attribution verbs that end the line ("… wrote:"), in every language we support and a few
# neighbours: en, de, fr, es, nl, it, sv/da/no, pl, fi, pt, ru/uk, zh (simplified and
# traditional), ja (Thunderbird "さんは書きました", Apple Mail "のメッセージ"/"のメール").
_QUOTE_VERBS = (
    "wrote", "writes", "schrieb", "a écrit", "escribió", "schreef", "geschreven",
    "ha scritto", "skrev", "napisał", "napisał(a)", "napisała", "pisze", "kirjoitti",
    "escreveu", "написал", "написал(а)", "написала", "пишет", "пише", "写道", "寫道",
    "書きました", "のメッセージ", "のメール",
)  # fmt: skip
# German, Dutch and the Scandinavian languages put the verb before the name:
# "Am … schrieb Name <addr>:", "Op … schreef Name:", "Den … skrev Name:".
_VERBS_FIRST = ("schrieb", "schreef", "skrev")
_WROTE_MID = re.compile(r"\b(?:schrieb|schreef|skrev)\s+[^:：]{1,120}[:：]\s*$")
_ON = re.compile(r"on\b", re.IGNORECASE)
# "<date>, "Name" <addr>:" in any language: an address in angle brackets, a time, a colon.
_DATED_FROM = re.compile(r"<\s*[^<>\s]+@[^<>\s]+\s*>.*[:：]\s*$")
_TIME = re.compile(r"\d{1,2}[:.]\d{2}")
_DIGIT = re.compile(r"\d")
_GMAIL_DATE_FIRST = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b.*(?:<\S+@\S+>|\bGMT[+-]\d)")
_ZOHO = re.compile(r"^-{2,}\s*on\b.*\bwrote\s*-{2,}\s*$", re.IGNORECASE)
_ATTRIBUTION_START = re.compile(
    r"^(?:-+\s*)?(?:on|am|le|el|op|il|in data|em|den|dnia|w dniu|at)\b|^\d|^\w{1,12}\.?,?\s+\d"
    r"|^(?:於|于|在)",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[^\W\d]{4,}[.!?]$|[!?]$")
_ORIGINAL = re.compile(
    r"^\s*\*?\s*-{2,}\s*(?:original message|ursprüngliche nachricht|originalnachricht|"
    r"mensaje original|message d['’]origine|oprindelig besked|oorspronkelijk bericht|"
    r"origineel bericht|messaggio originale|mensagem original|ursprungligt meddelande|"
    r"originalmeddelande|opprinnelig melding|wiadomość oryginalna|oryginalna wiadomość|"
    r"исходное сообщение|原始邮件|原始郵件|元のメッセージ|オリジナル メッセージ|"
    r"alkuperäinen viesti)\s*-{2,}\s*\*?\s*$",
    re.IGNORECASE,
)
# Forwards: Gmail/Thunderbird "---- Forwarded message ----" and Apple Mail's "Begin
# forwarded message:", as each client writes them in each language.
_FORWARD_DASHED = (
    r"forwarded message|weitergeleitete nachricht|message transféré|mensaje reenviado|"
    r"doorgestuurd bericht|mensagem encaminhada|mensagem reencaminhada|messaggio inoltrato|"
    r"vidarebefordrat meddelande|wiadomość przekazana dalej|przekazana wiadomość|"
    r"пересылаемое сообщение|пересланное сообщение|転送されたメッセージ|转发的邮件|"
    r"轉寄的郵件|已转发邮件"
)
_FORWARD_INTRO = (
    r"begin forwarded message|anfang der weitergeleiteten nachricht|"
    r"début du message (?:réexpédié|transféré)|(?:inicio|comienzo) del mensaje reenviado|"
    r"begin doorgestuurd bericht|início da mensagem (?:reencaminhada|encaminhada)|"
    r"inizio messaggio inoltrato|vidarebefordrat brev|"
    r"początek przekazywanej wiadomości|начало переадресованного сообщения|"
    r"転送されたメッセージ|以下是转发的邮件|转发的邮件|轉寄的郵件"
)
_FORWARDED = re.compile(
    rf"^\s*(?:-{{2,}}\s*(?:{_FORWARD_DASHED})\s*-{{2,}}|(?:{_FORWARD_INTRO})\s*[:：]?)\s*$",
    re.IGNORECASE,
)
_UNDERSCORES = re.compile(r"^\s*_{2,}\s*$")  # Outlook's separator and mailing-list footers
_SIG_DELIMITER = re.compile(r"^--\s*$")  # "-- "; clients and corpora often lose the space
# Mobile and app footers ("Sent from my iPhone"), as the apps write them in each language.
_MOBILE_WORDS = (
    r"sent from|sent with|sent via|sent on the go|get outlook for|envoyé depuis|"
    r"envoyé de mon|envoyé à partir de|obtenir outlook pour|gesendet von|"
    r"von meinem .+ gesendet|outlook für \w+ herunterladen|sendt fra|skickat från|"
    r"hämta outlook för|verzonden met|verzonden vanaf|outlook voor \w+ downloaden|"
    r"enviado desde|obtener outlook para|enviado do meu|enviado de meu|enviado do|"
    r"baixe o outlook para|baixar o outlook para|obter o outlook para|inviato da|"
    r"scarica outlook per|wysłane z|wysłano z|pobierz aplikację outlook|pobierz outlook|"
    r"отправлено с|получите outlook для|получить outlook для|скачайте outlook для"
)
_MOBILE_CJK = (
    r"\S{1,20}から送信|\S{1,20}から送信されました|ios\s*版\s*outlook|android\s*版\s*outlook|"
    r"发自我的|發自我的|来自我的|從我的|寄自我的|获取\s*outlook|取得\s*outlook|下载\s*outlook"
)
_MOBILE = re.compile(rf"^(?:(?:{_MOBILE_WORDS})\b|{_MOBILE_CJK})", re.IGNORECASE)
_MARKUP = re.compile(r"<[^>]*>|\[([^\]]*)\]\([^)]*\)")
_DECORATION = re.compile(r"^[\s\-=_*~#+\u1427]*$")  # U+1427: a mail-tracking placeholder
# Outlook's header block ("From:", "Sent:", "To:", "Subject:"), in every language Outlook,
# Apple Mail and the webmails write it, bold ("*From:*") as HTML converters render it.
_HEADER_FIELD = re.compile(r"^\s*\*?\s*([^\W\d_][^:：*]{0,20}?)\s*\*?\s*[:：]\*?")
_FROM_FIELDS = {
    "from", "de", "van", "von", "da", "från", "fra", "od", "от", "差出人", "送信者", "发件人",
    "發件人", "寄件者", "寄件人", "lähettäjä",
}  # fmt: skip
_DATE_FIELDS = {
    "sent", "date", "envoyé", "envoyé le", "verzonden", "datum", "gesendet", "inviato",
    "data", "skickat", "sendt", "dato", "enviado", "enviada", "enviado el", "fecha",
    "wysłane", "wysłano", "отправлено", "дата", "送信日時", "日付", "日時", "发送时间",
    "发送日期", "日期", "時間", "时间", "寄件日期", "傳送時間", "lähetetty", "päivämäärä",
}  # fmt: skip
_RCPT_FIELDS = {
    "to", "subject", "cc", "à", "a", "objet", "aan", "onderwerp", "an", "betreff", "oggetto",
    "till", "ämne", "til", "emne", "para", "asunto", "assunto", "do", "temat", "кому", "тема",
    "копия", "kopie", "kopia", "dw", "宛先", "件名", "収信者", "收件人", "收件者", "主题",
    "主旨", "抄送", "副本", "vastaanottaja", "aihe",
}  # fmt: skip
# A cheap gate for the line-start rules (separators, headers, signatures, dated lines): a
# line this does not match is none of them. The rules themselves stay separate and exact.
_LEAD = re.compile(
    r"\s*(?:[-_*<\[\d]|"
    rf"(?:{'|'.join(sorted(_FROM_FIELDS))})\s*\*?\s*[:：]|(?:{_MOBILE_WORDS})|{_MOBILE_CJK}|"
    rf"{_FORWARD_INTRO})",
)  # matched against the lower-cased line: much faster than re.IGNORECASE
_END_CHARS = (":", "：")
_SUPERCITE = re.compile(r"[A-Z]{1,3}>(?: |$)")


@dataclass(frozen=True)
class _Marker:
    """Where the quoted history (or a signature) begins; ``end`` is just after its header."""

    start: int
    end: int
    kind: str  # "attribution" | "header" | "separator" | "signature"


def trim_reply(text: str, sender: str | None = None) -> str:
    """What the person wrote in a top-posted reply: everything above the first attribution,
    original-message separator, Outlook header block or forward; without the signature, the
    quoted tail and trailing blank lines. Leading blank lines go too; the rest is kept as is.

    A reply that *starts* with an attribution or header was written below it (bottom-posted,
    or a bare forward): then the header and the quote right under it are skipped instead.
    Text under a quote that follows an attribution is an interleaved answer: it stays, with
    its quote, and only the attribution goes. ``sender`` (the From display name) lets a
    closing that is only the person's name ("Bea") go too.
    """
    lines = _split_lines(text[:MAX_REPLY_CHARS])
    lo, hi = _blank_bounds(lines, 0, len(lines))
    scan = _Scan(lines)
    while True:
        marker = scan.first_marker(lo, hi)
        if marker is None or marker.start > lo or marker.kind == "signature":
            break
        lo = _skip_quote(lines, marker.end, hi)
        lo, hi = _blank_bounds(lines, lo, hi)
    drops: list[tuple[int, int]] = []  # attributions inside an interleaved reply
    while marker is not None and marker.kind == "attribution":
        after = _after_quote(lines, marker.end, hi)
        if after is None:
            break
        following = scan.first_marker(after, hi)
        if following is not None and following.start == after:
            break  # the quote is followed by more history or a signature, not by answers
        drops.append((marker.start, marker.end))
        marker = following
    if marker is not None:
        hi = marker.start
    kept = lines[lo:hi]
    for start, end in reversed(drops):
        del kept[start - lo : end - lo]
    unquote = marker is None or marker.kind in ("signature", "separator")
    return _tidy_tail(kept, unquote, _sender_names(sender))


def _after_quote(lines: list[str], i: int, hi: int) -> int | None:
    """The first line of the person's text after the quote that follows an attribution
    ending before line ``i`` (an interleaved or bottom-posted reply), or None if there is no
    quote there or nothing the person wrote after it.

    Text under a quote is the person's answer to it: mail clients never put unquoted text
    after the quoted history they add. The quote stays, as the context of the answer."""
    while i < hi and not lines[i].strip():
        i += 1
    if i >= hi or not _is_quoted(lines[i]):
        return None
    i = _skip_quote(lines, i, hi)
    return i if i < hi else None


def _skip_quote(lines: list[str], i: int, hi: int) -> int:
    """Past the quoted (and blank) lines from ``i``, and the tails of quoted lines that a
    client wrapped without a ">" (a lower-case fragment right under a long quoted line)."""
    while i < hi:
        line = lines[i]
        wrapped = line[:1].islower() and len(lines[i - 1]) >= 40 and _is_quoted(lines[i - 1])
        if not (wrapped or not line.strip() or _is_quoted(line)):
            break
        i += 1
    return i


def _tidy_tail(lines: list[str], unquote: bool = True, names: frozenset[str] = frozenset()) -> str:
    """Without the quoted tail (unless that is all there is), the closing (sign-off, contact
    block, disclaimer: unless that is all there is), decoration and blank lines. A quote
    left at the end once the closing is gone was history too (a signature under the quote)."""
    lo, hi = _blank_bounds(lines, 0, len(lines))
    hi = _without_quoted_tail(lines, lo, hi, unquote)
    closing = _closing_start(lines, lo, hi, names)
    if closing < hi and _has_text(lines, lo, closing):
        hi = _without_quoted_tail(lines, lo, closing, unquote)
    lo, hi = _blank_bounds(lines, lo, hi)
    return "\n".join(lines[lo:hi])


def _without_quoted_tail(lines: list[str], lo: int, hi: int, unquote: bool) -> int:
    """The end of ``lines[lo:hi]`` without trailing decoration, empty ">" lines and (with
    ``unquote``, unless that is all there is) the quoted lines."""
    if unquote:
        tail = hi
        while tail > lo and (not lines[tail - 1].strip() or _is_quoted(lines[tail - 1])):
            tail -= 1
        if tail > lo:  # a message that is only a quote stays
            hi = tail
    while hi > lo and (_DECORATION.match(lines[hi - 1]) or not lines[hi - 1].strip(" \t>")):
        hi -= 1
    return hi


def _has_text(lines: list[str], lo: int, hi: int) -> bool:
    for k in range(lo, hi):  # noqa: SIM110 (a plain loop is faster than any() here)
        if lines[k].strip():
            return True
    return False


def _split_lines(text: str) -> list[str]:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _blank_bounds(lines: list[str], lo: int, hi: int) -> tuple[int, int]:
    while lo < hi and not lines[lo].strip():
        lo += 1
    while hi > lo and not lines[hi - 1].strip():
        hi -= 1
    return lo, hi


def _strip_blank(lines: list[str]) -> list[str]:
    lo, hi = _blank_bounds(lines, 0, len(lines))
    return lines[lo:hi]


def _is_quoted(line: str) -> bool:
    """A "> " quote, or a Supercite-style "AB> " one (initials before the ">")."""
    return line.startswith(">") or (">" in line[1:4] and bool(_SUPERCITE.match(line)))


def _is_signature(line: str) -> bool:
    """A signature delimiter or a short "Sent from my iPhone"-style line (not a sentence)."""
    if _SIG_DELIMITER.match(line):
        return True
    if "<" in line or "[" in line:
        plain = _MARKUP.sub(r"\1", line).strip()
    elif _LEAD.match(line.lower()):
        plain = line.strip()
    else:
        return False
    return bool(_MOBILE.match(plain)) and "," not in plain and len(plain.split()) <= 10


def _first_marker(lines: list[str]) -> _Marker | None:
    """The earliest marker. Only unquoted lines count, except on the first line, where a
    quoted attribution means the message holds nothing but history."""
    return _Scan(lines).first_marker(0, len(lines))


def _is_end_candidate(line: str) -> bool:
    """Could ``line`` end an attribution ("…wrote:", "…<addr>:", "… wrote")?"""
    last = line[-1:]
    if last in _END_SPACE:
        line = line.rstrip()
        last = line[-1:]
    return last in _END_LAST and (last in _END_CHARS or line[-5:].lower() == "wrote")


_END_SPACE = frozenset(" \t\u00a0\f\v")
_END_LAST = frozenset(":：eE")
_END_TAIL = _END_LAST | _END_SPACE


class _Scan:
    """Marker search over one message's lines; attribution windows are computed once."""

    __slots__ = ("lines", "_starts")

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self._starts: dict[tuple[int, int], int | None] = {}

    def attribution_start(self, end: int, lo: int) -> int | None:
        key = (end, lo)
        if key not in self._starts:
            self._starts[key] = _attribution_start(self.lines, end, lo)
        return self._starts[key]

    def first_marker(self, lo: int, hi: int) -> _Marker | None:
        lines = self.lines
        ends: list[int] = []  # lines in [i, i + 5) that could end an attribution
        scanned = lo  # lines before this one have been tested for ``ends``
        for i in range(lo, hi):
            limit = i + 5 if i + 5 < hi else hi
            while scanned < limit:
                line = lines[scanned]
                if line[-1:] in _END_TAIL and _is_end_candidate(line):
                    ends.append(scanned)
                scanned += 1
            if ends and ends[0] < i:
                ends = [end for end in ends if end >= i]
            line = lines[i]
            head = line[:1]
            if i > lo and (head == ">" or (">" in line[1:4] and _SUPERCITE.match(line))):
                continue
            if not line or (head in _END_SPACE and not line.strip()):
                continue
            bare = line.lstrip("> ") if i == lo else line
            if _LEAD.match(bare.lower()):
                marker = _line_marker(lines, i, hi, bare)
                if marker is not None:
                    return marker
            elif ("<" in bare or "[" in bare) and _is_signature(bare):  # "[Sent from…](url)"
                return _Marker(i, i + 1, "signature")
            for end in ends:
                if self.attribution_start(end, lo) == i:
                    return _Marker(i, end + 1, "attribution")
        return None


def _line_marker(lines: list[str], i: int, hi: int, bare: str) -> _Marker | None:
    """A signature, separator, header block or one-line attribution starting on line ``i``."""
    if _is_signature(bare):
        return _Marker(i, i + 1, "signature")
    if _ORIGINAL.match(bare) or _FORWARDED.match(bare) or _UNDERSCORES.match(bare):
        return _Marker(i, _skip_header_block(lines, i + 1, hi), "separator")
    if _is_header_block(lines, i, hi):
        return _Marker(i, _skip_header_block(lines, i, hi), "header")
    stripped = bare.strip()
    if _ZOHO.match(stripped) or _GMAIL_DATE_FIRST.match(stripped):
        return _Marker(i, i + 1, "attribution")
    return None


def _attribution_start(lines: list[str], end: int, lo: int = 0) -> int | None:
    """The first line of an "On <date>, <name> wrote:" attribution ending on line ``end``,
    wrapped over up to five lines. The shortest window that matches wins, unless it starts
    like a continuation ("<addr>", "a écrit :"), then the nearest earlier line that starts
    like an attribution ("On", "Le", a date) does."""
    last = lines[end].rstrip()
    if not (last.endswith(_END_CHARS) or last[-5:].lower() == "wrote"):
        return None
    last_quoted = _is_quoted(last)
    last_dated = last_quoted and ("@" in last or bool(_DIGIT.search(last)))
    found: int | None = None  # the shortest window, when it starts like a continuation
    window = ""
    inner = False  # a quoted line strictly between the window's first line and ``end``
    for start in range(end, max(end - 5, lo - 1), -1):
        line = lines[start]
        first = line.strip()
        window = first if start == end else f"{first} {window}"
        quoted = _is_quoted(line)
        if start < end - 1 and _is_quoted(lines[start + 1]):
            inner = True
        if not first or (quoted and start > lo):
            continue
        if start < end and not quoted and (inner or last_dated):
            # only a bare wrapped tail ("> wrote:", ">:") may look quoted, not a quote's text
            break
        text = window.lstrip("> ")
        if len(text) > 400:
            break
        if start < end and first[-1] in ".!?" and _SENTENCE_END.search(first[-8:]):
            continue  # a window never begins with the end of the person's sentence
        if found is not None and not (_ATTRIBUTION_START.match(first) or "@" in first):
            continue  # after a continuation, only a line that starts like one may win
        has_at = "@" in text
        dated = has_at or bool(_DIGIT.search(text))
        if (dated and (has_at or _ATTRIBUTION_START.match(text)) and _wrote(text)) or (
            has_at
            and text[-1] in _END_CHARS_STR
            and _DATED_FROM.search(text)
            and _TIME.search(text)
        ):
            if found is not None or not _continuation(first):
                return start
            found = start
    return found


def _continuation(head: str) -> bool:
    """A line that continues an attribution rather than starting one ("<addr>", "wrote:",
    "10:30写道：")."""
    return (
        head[:1] in "<(>["
        or head[:1].islower()
        or head.lower().startswith("mailto:")
        or bool(_TIME_FIRST.match(head))
    )


_TIME_FIRST = re.compile(r"\d{1,2}[:.]\d{2}(?!\d)")


_END_CHARS_STR = ":："


def _wrote(text: str) -> bool:
    """Ends like an attribution: "<verb>:" in any language ("Am … schrieb Name:" too), or
    English "On … wrote" without the colon. String tests, not a regex search: this runs on
    every window of every candidate line."""
    tail = text[-160:].rstrip().lower()
    if tail.endswith(_END_CHARS):
        head = tail[:-1].rstrip()
        if head.endswith(_QUOTE_VERBS):
            return True
        return any(verb in tail for verb in _VERBS_FIRST) and bool(_WROTE_MID.search(tail))
    return tail.endswith("wrote") and not tail[-6:-5].isalnum() and bool(_ON.match(text))


def _is_header_block(lines: list[str], i: int, hi: int | None = None) -> bool:
    """Outlook's "From:" followed within five lines by a date field and a recipient field."""
    if _header_name(lines[i]) not in _FROM_FIELDS:
        return False
    stop = i + 6 if hi is None else min(i + 6, hi)
    names = {_header_name(line) for line in lines[i + 1 : stop]}
    return bool(names & _DATE_FIELDS) and bool(names & _RCPT_FIELDS)


def _header_name(line: str) -> str | None:
    m = _HEADER_FIELD.match(line)
    return m.group(1).strip().lower() if m else None


def _skip_header_block(lines: list[str], i: int, hi: int | None = None) -> int:
    """Past a header block starting at ``i`` (or after blank lines), to the blank line."""
    hi = len(lines) if hi is None else hi
    j = i
    while j < hi and not lines[j].strip():
        j += 1
    if j >= hi or _header_name(lines[j]) is None:
        return i
    while j < hi and lines[j].strip():
        j += 1
    return j


# --------------------------------------------------------------------------- closings

# Sign-offs, as people end a mail in each language we support. A line that is only one of
# these (any case, any trailing punctuation), followed by nothing but a short name/contact
# block, ends the person's text. Whole phrases, looked up in a set: no regex per line.
_SIGNOFF_PHRASES = frozenset(
    phrase.strip()
    for group in (
        # en
        "best|best regards|kind regards|kindest regards|warm regards|warmest regards|regards|"
        "with best regards|with kind regards|best wishes|all the best|many thanks|cheers|"
        "thanks|thanks a lot|thanks again|thanks so much|thanks in advance|thank you|"
        "thank you so much|thank you again|thank you very much|thx|sincerely|sincerely yours|"
        "yours|yours sincerely|yours truly|yours faithfully|respectfully|take care|talk soon|"
        "br|rgds|best rgds",
        # de
        "mit freundlichen grüßen|mit freundlichen grüssen|mit freundlichem gruß|"
        "mit freundlichem gruss|freundliche grüße|freundliche grüsse|viele grüße|viele grüsse|"
        "beste grüße|beste grüsse|liebe grüße|liebe grüsse|herzliche grüße|herzliche grüsse|"
        "schöne grüße|sonnige grüße|grüße|grüsse|gruß|gruss|lg|vg|mfg|danke|danke schön|"
        "vielen dank|bis bald",
        # fr
        "cordialement|bien cordialement|très cordialement|bien à vous|bien à toi|merci|"
        "merci beaucoup|merci d'avance|salutations|salutations distinguées|belle journée|"
        "bonne journée|bonne soirée|à bientôt|amicalement|bises",
        # es
        "saludos|un saludo|saludos cordiales|un cordial saludo|cordiales saludos|atentamente|"
        "gracias|muchas gracias|un abrazo|abrazos|cordialmente|hasta pronto",
        # nl
        "met vriendelijke groet|met vriendelijke groeten|vriendelijke groet|"
        "vriendelijke groeten|met hartelijke groet|hartelijke groet|hartelijke groeten|groet|"
        "groeten|groetjes|mvg|bedankt|dank je|dank je wel|dank u|dank u wel|alvast bedankt|"
        "tot snel",
        # pt
        "atenciosamente|abraço|abraços|um abraço|obrigado|obrigada|muito obrigado|"
        "muito obrigada|cumprimentos|melhores cumprimentos|saudações|att|beijos|até logo",
        # it
        "cordiali saluti|distinti saluti|tanti saluti|saluti|un saluto|un caro saluto|grazie|"
        "grazie mille|buona giornata|a presto|ciao",
        # sv
        "med vänliga hälsningar|vänliga hälsningar|hälsningar|bästa hälsningar|mvh|vh|tack|"
        "tack så mycket|ha det bra|allt gott",
        # pl
        "pozdrawiam|pozdrawiam serdecznie|serdecznie pozdrawiam|z poważaniem|pozdrowienia|"
        "dziękuję|dzięki|z wyrazami szacunku",
        # ru
        "с уважением|спасибо|благодарю|всего доброго|всего хорошего|"
        "с наилучшими пожеланиями|до связи",
        # ja
        "よろしくお願いします|よろしくお願いいたします|よろしくお願い致します|宜しくお願いします|"
        "宜しくお願いいたします|よろしくお願い申し上げます|以上、よろしくお願いします|以上|敬具|"
        "ありがとうございます|ありがとうございました",
        # zh
        "此致|敬礼|此致敬礼|谢谢|謝謝|祝好|顺祝商祺|顺颂商祺|祝工作顺利|多谢|感谢|感謝",
    )
    for phrase in group.split("|")
)
_SIGNOFF_PUNCTUATION = " \t,.;!！。、，~…-–—*_"
# What a name/title/company/contact line may hold: short, not a sentence, not a list item.
_PHONE = re.compile(r"\+?\d[\d ()./-]{6,}\d")
_NOT_CONTACT = re.compile(r"[-*•]\s|\d{1,2}[.)]\s|#|>|\[|p\.?s\b|(?:rating|score|action|todo|ai)\b")
# Legal footers: a paragraph that starts like one and says what it is about.
_DISCLAIMER_START = re.compile(
    r"\W{0,3}(?:"
    r"(?:confidentiality|privileged|legal|important)\s+(?:notice|note|statement|warning)|"
    r"disclaimer|confidential|notice:|"
    r"this\s+(?:e-?mail|message|communication|transmission)|the information (?:contained )?in|"
    r"if you (?:are not|have received)|"
    r"diese\s+(?:e-?mail|nachricht)|vertraulichkeitshinweis|der inhalt dieser|hinweis:|"
    r"ce\s+(?:message|courriel|e-?mail)|avis de confidentialité|avertissement|"
    r"les informations contenues|"
    r"este\s+(?:mensaje|correo)|aviso (?:legal|de confidencialidad)|la información contenida|"
    r"dit\s+(?:e-?mail)?bericht|deze e-?mail|de informatie in dit|"
    r"esta mensagem|este e-?mail|aviso de confidencialidade|as informações contidas|"
    r"questo messaggio|questa e-?mail|le informazioni contenute|avviso di riservatezza|"
    r"detta\s+(?:e-?post)?meddelande|detta e-?brev|informationen i detta|konfidentialitet|"
    r"(?:ta|niniejsza) wiadomość|informacje zawarte|klauzula poufności|"
    r"(?:это|данное|настоящее)\s+(?:электронное\s+)?(?:сообщение|письмо)|"
    r"информация,? содержащаяся|"
    r"この(?:電子)?メール|本メール|機密保持|【機密|"
    r"本邮件|此邮件|本郵件|本電子郵件|保密声明|免责声明|免責聲明"
    r")",
)
_DISCLAIMER_TITLE = re.compile(
    r"\W{0,3}(?:(?:confidentiality|privileged|legal)\s+(?:notice|note|statement|warning)|"
    r"disclaimer|vertraulichkeitshinweis|avis de confidentialité|aviso (?:legal|de "
    r"confidencialidad)|aviso de confidencialidade|avviso di riservatezza|klauzula poufności|"
    r"機密保持|【機密|保密声明|免责声明|免責聲明)",
)
_DISCLAIMER_WORDS = re.compile(
    r"confidential|privileged|vertraulich|confidentiel|confidencial|vertrouwelijk|riservat|"
    r"konfidentiell|sekretess|poufn|конфиденциальн|機密|秘密|保密|机密|機密"
)
_DISCLAIMER_WHOM = re.compile(
    r"recipient|addressee|attachment|intended|adressat|empfänger|anhänge|destinataire|"
    r"pièces jointes|destinatari|anexos?|adjuntos?|geadresseerde|bestemd|bijlage|allegat|"
    r"destinatário|mottagare|bilag|adresat|załącz|адресат|получател|вложени|宛先|添付|"
    r"收件人|附件|收件者"
)


def _closing_start(lines: list[str], lo: int, hi: int, names: frozenset[str]) -> int:
    """Where the closing at the end of the person's text begins: a legal disclaimer, a
    sign-off line ("Best regards,", "Mit freundlichen Grüßen", "此致") followed only by a
    short name/title/contact block, or (when the sender's name is known) a block that starts
    with that name. ``hi`` when there is none: the person's text is never cut mid-way.

    The public corpus disagrees on sign-offs (crisp drops "Regards, John Doe", discourse
    keeps "Best regards, //Jef"); a check-in record is the person's words, so the sign-off
    and contact block go, like any other signature. A sign-off with nothing after it
    ("Thanks!" as the last line) is kept: it may be all the person wrote to close."""
    hi = _disclaimer_start(lines, lo, hi)
    cut = hi
    block = 0  # non-blank lines below the candidate sign-off
    k = hi
    while k > lo:
        line = lines[k - 1].strip()
        if not line:
            k -= 1
            continue
        low = line.lower()
        if names and _is_named_signoff(low, names):
            cut = k - 1  # "Thanks, Bea": a whole closing on one line
            break
        if _is_signoff(low):
            if block:
                cut = k - 1
                while cut > lo and _is_signoff(lines[cut - 1].strip().lower()):
                    cut -= 1  # "此致" over "敬礼", "Thanks again," over "Best,"
            break
        if names and _is_name_line(low, names) and (k - 1 == lo or not lines[k - 2].strip()):
            cut = k - 1  # the name opens the block; keep walking: a sign-off may stand above
        elif block >= 8 or not (
            (names and _is_name_line(low, names)) or _is_contact_line(line, low, lines, k - 1, lo)
        ):
            break
        block += 1
        k -= 1
    return cut


def _is_signoff(low: str) -> bool:
    """A line (lower-cased) that is only a sign-off: "Best regards,", "— Cheers!", "此致"."""
    return len(low) <= 48 and " ".join(low.strip(_SIGNOFF_PUNCTUATION).split()) in _SIGNOFF_PHRASES


def _is_named_signoff(low: str, names: frozenset[str]) -> bool:
    """A sign-off and the sender's name on one line: "Thanks, Bea", "Cheers Bea B."."""
    words = low.replace(",", " ").split()
    for n in range(1, min(3, len(words) - 1) + 1):
        name = [w.strip(_SIGNOFF_PUNCTUATION) for w in words[-n:]]
        if name[0] in names and all(w in names or len(w) <= 1 for w in name):
            return _is_signoff(" ".join(words[:-n]))
    return False


def _contact_detail(low: str) -> bool:
    """An address, URL, phone number or "a | b" layout: only signatures have those."""
    return "@" in low or "|" in low or "://" in low or "www." in low or bool(_PHONE.search(low))


def _is_contact_line(line: str, low: str, lines: list[str], k: int, lo: int) -> bool:
    """A name, title, company, phone, address or URL line of a signature block (line ``k``
    of ``lines``). A lower-case line ("руководитель отдела продаж") counts only right under
    another line that is not a sign-off: a title may follow a name, but a sentence never
    follows "Thanks,"."""
    n = len(line)
    if n > 90 or _NOT_CONTACT.match(low):
        return False
    if n > 50 or line[-1] in "?!:;？！：" or line.count(" ") > 5:
        return _contact_detail(low)
    head = line[0]
    if not (head.isalnum() or head in "/-–—~(+"):
        return _contact_detail(low)
    if head.islower():
        above = lines[k - 1].strip().lower() if k > lo else ""
        return bool(above) and len(above) <= 60 and not _is_signoff(above)
    return True


def _is_name_line(low: str, names: frozenset[str]) -> bool:
    """The sender's name, first name or initials alone on a line ("Bea", "- Bea B.", "馬場")."""
    if len(low) > 60:
        return False
    words = [w for w in _NAME_SPLIT.split(low) if w]
    return (
        0 < len(words) <= 4 and words[0] in names and all(w in names or len(w) == 1 for w in words)
    )


_NAME_SPLIT = re.compile(r"[\s,.|/~\-–—]+")


def _disclaimer_start(lines: list[str], lo: int, hi: int) -> int:
    """The first line of the legal-footer paragraphs that end the text, or ``hi``. A
    paragraph counts when it starts like a disclaimer and is titled ("CONFIDENTIALITY
    NOTICE") or says both what it protects and from whom (confidential … recipient): a
    remark that mentions a secret ("this message is confidential, keep it") stays."""
    cut = k = hi
    while k > lo:
        if not lines[k - 1].strip():
            k -= 1
            continue
        end, start = k, k - 1
        while start > lo and lines[start - 1].strip():
            start -= 1
        # a disclaimer glued under a signature block (short lines) starts its own paragraph
        first = start
        for j in range(end - 1, start, -1):
            if len(lines[j - 1]) <= 60 and _DISCLAIMER_START.match(lines[j].lstrip().lower()):
                first = j
                break
        head = lines[first].lstrip().lower()
        if _DISCLAIMER_START.match(head):
            paragraph = " ".join(line.strip() for line in lines[first:end]).lower()
            if _DISCLAIMER_TITLE.match(paragraph) or (
                _DISCLAIMER_WORDS.search(paragraph) and _DISCLAIMER_WHOM.search(paragraph)
            ):
                cut = k = first
                continue
        if cut < hi and all(_DECORATION.match(line) for line in lines[start:end]):
            k = start
            continue
        break
    return cut


def _sender_names(sender: str | None) -> frozenset[str]:
    """The words of the sender's display name, and its CJK surname alone ("馬場 ビー")."""
    if not sender:
        return frozenset()
    words = [w for w in re.split(r"[\s,.\"'()<>]+", sender.casefold()) if len(w) > 1]
    return frozenset(words)
