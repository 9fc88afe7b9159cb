"""Trimming replies in every language and client the product claims: attribution lines,
Outlook header blocks, "Original Message" separators, forwards, signatures, sign-offs,
disclaimers, the person's own ">" lines, and the HTML quote containers of each client.

Each case is a realistic shape a client produces, never a copy of a corpus fixture.
"""

from __future__ import annotations

import pytest

from automation.domain.mime import _html_to_text
from automation.replies import decode_message, extract, trim_reply

REPLY = "Ana did great this sprint.\nRating: 4"
QUOTE = "> Hi Bea,\n>\n> 1. What went well since your last check-in?\n"

# --------------------------------------------------------------------------- attribution

ATTRIBUTIONS = {
    "en": "On Tue, Mar 3, 2026 at 10:30 AM Check-ins <checkins@example.com> wrote:",
    "en-apple": "On Mar 3, 2026, at 10:30, Check-ins <checkins@example.com> wrote:",
    "en-thunderbird": "On 3/3/26 10:30 AM, Check-ins wrote:",
    "de": "Am Di., 3. März 2026 um 10:30 Uhr schrieb Check-ins <checkins@example.com>:",
    "de-thunderbird": "Am 03.03.26 um 10:30 schrieb Check-ins:",
    "fr": "Le mar. 3 mars 2026 à 10:30, Check-ins <checkins@example.com> a écrit :",
    "es": "El mar, 3 mar 2026 a las 10:30, Check-ins (<checkins@example.com>) escribió:",
    "nl": "Op di 3 mrt 2026 om 10:30 schreef Check-ins <checkins@example.com>:",
    "nl-thunderbird": "Op 03-03-2026 om 10:30 schreef Check-ins:",
    "pt": "Em ter., 3 de mar. de 2026 às 10:30, Check-ins <checkins@example.com> escreveu:",
    "it": "Il giorno mar 3 mar 2026 alle ore 10:30 Check-ins <checkins@example.com> ha scritto:",
    "it-thunderbird": "Il 03/03/26 10:30, Check-ins ha scritto:",
    "sv": "Den tis 3 mars 2026 kl 10:30 skrev Check-ins <checkins@example.com>:",
    "sv-thunderbird": "Den 2026-03-03 kl. 10:30, skrev Check-ins:",
    "pl": "W dniu wt., 3.03.2026 o 10:30 Check-ins <checkins@example.com> napisał(a):",
    "pl-thunderbird": "W dniu 3.03.2026 o 10:30, Check-ins pisze:",
    "ru": "вт, 3 мар. 2026 г. в 10:30, Check-ins <checkins@example.com>:",
    "ru-apple": "3 марта 2026 г., в 10:30, Check-ins <checkins@example.com> написал(а):",
    "ru-thunderbird": "03.03.2026 10:30, Check-ins пишет:",
    "ja": "2026年3月3日(火) 10:30 Check-ins <checkins@example.com>:",
    "ja-apple": "2026/03/03 10:30、Check-ins <checkins@example.com>のメール:",
    "ja-message": "2026/03/03 10:30、Check-ins <checkins@example.com> のメッセージ:",
    "ja-thunderbird": "2026/03/03 10:30, Check-ins さんは書きました:",
    "zh": "Check-ins <checkins@example.com> 于2026年3月3日周二 10:30写道：",
    "zh-apple": "在 2026年3月3日，上午10:30，Check-ins <checkins@example.com> 写道：",
    "zh-tw": "於 2026年3月3日 週二 上午10:30，Check-ins 寫道：",
}


@pytest.mark.parametrize("attribution", ATTRIBUTIONS.values(), ids=ATTRIBUTIONS.keys())
def test_attribution_in_every_language(attribution):
    text = f"{REPLY}\n\n{attribution}\n\n{QUOTE}"
    assert trim_reply(text) == REPLY


WRAPPED = {
    "en": "On Tue, Mar 3, 2026 at 10:30 AM Check-ins <\ncheckins@example.com> wrote:",
    "de": "Am Di., 3. März 2026 um 10:30 Uhr schrieb Check-ins <\ncheckins@example.com>:",
    "fr": "Le mar. 3 mars 2026 à 10:30, Check-ins <checkins@example.com> a\nécrit :",
    "es": "El mar, 3 mar 2026 a las 10:30, Check-ins (<\ncheckins@example.com>) escribió:",
    "nl": "Op di 3 mrt 2026 om 10:30 schreef Check-ins <\ncheckins@example.com>:",
    "pt": "Em ter., 3 de mar. de 2026 às 10:30, Check-ins <\ncheckins@example.com> escreveu:",
    "it": "Il giorno mar 3 mar 2026 alle ore 10:30 Check-ins <\ncheckins@example.com> ha\nscritto:",
    "sv": "Den tis 3 mars 2026 kl 10:30 skrev Check-ins <\ncheckins@example.com>:",
    "pl": "W dniu wt., 3.03.2026 o 10:30 Check-ins <checkins@example.com>\nnapisał(a):",
    "ru": "вт, 3 мар. 2026 г. в 10:30, Check-ins <\ncheckins@example.com>:",
    "ja": "2026年3月3日(火) 10:30 Check-ins <\ncheckins@example.com>:",
    "zh": "Check-ins <checkins@example.com> 于2026年3月3日周二\n10:30写道：",
    "en-three-lines": (
        "On Tue, Mar 3, 2026 at 10:30 AM\nCheck-ins Service\n<checkins@example.com> wrote:"
    ),
}


@pytest.mark.parametrize("attribution", WRAPPED.values(), ids=WRAPPED.keys())
def test_attribution_wrapped_by_the_client(attribution):
    text = f"{REPLY}\n\n{attribution}\n\n{QUOTE}"
    assert trim_reply(text) == REPLY


def test_a_sentence_ending_in_a_colon_is_not_an_attribution():
    text = "On Monday we agreed on three things:\n- hire\n- ship\n- rest"
    assert trim_reply(text) == text
    text = "Am Montag haben wir Folgendes vereinbart, schrieb ich:\n- Urlaub"
    assert trim_reply(text) == text


# --------------------------------------------------------------------------- Outlook headers

HEADERS = {
    "en": ("From:", "Sent:", "To:", "Subject:"),
    "en-mac": ("From:", "Date:", "To:", "Subject:"),
    "de": ("Von:", "Gesendet:", "An:", "Betreff:"),
    "fr": ("De :", "Envoyé :", "À :", "Objet :"),
    "es": ("De:", "Enviado:", "Para:", "Asunto:"),
    "nl": ("Van:", "Verzonden:", "Aan:", "Onderwerp:"),
    "pt": ("De:", "Enviada:", "Para:", "Assunto:"),
    "it": ("Da:", "Inviato:", "A:", "Oggetto:"),
    "sv": ("Från:", "Skickat:", "Till:", "Ämne:"),
    "pl": ("Od:", "Wysłano:", "Do:", "Temat:"),
    "ru": ("От:", "Отправлено:", "Кому:", "Тема:"),
    "ja": ("差出人:", "送信日時:", "宛先:", "件名:"),
    "zh": ("发件人:", "发送时间:", "收件人:", "主题:"),
    "zh-tw": ("寄件者:", "寄件日期:", "收件者:", "主旨:"),
}


@pytest.mark.parametrize("fields", HEADERS.values(), ids=HEADERS.keys())
def test_outlook_header_block_in_every_language(fields):
    sender, sent, to, subject = fields
    block = (
        f"{sender} Check-ins <checkins@example.com>\n{sent} 3 March 2026 10:30\n"
        f"{to} Bea Boss <bea@example.com>\n{subject} How did your check-in go?\n"
    )
    text = f"{REPLY}\n\n{block}\nHi Bea,\n\n1. What went well since your last check-in?\n"
    assert trim_reply(text) == REPLY
    # as HTML converters render Outlook's bold field names, after its separator line
    bold = "\n".join(
        f"*{line.split(' ', 1)[0]}* {line.split(' ', 1)[1]}" for line in block.split("\n") if line
    )
    text = f"{REPLY}\n\n________________________________\n{bold}\n\nHi Bea,\n"
    assert trim_reply(text) == REPLY


def test_a_from_line_alone_is_not_a_header_block():
    text = "From: the team, with thanks.\nTo: everyone who helped."
    assert trim_reply(text) == text


ORIGINALS = [
    "-----Original Message-----",
    "-----Ursprüngliche Nachricht-----",
    "-----Message d'origine-----",
    "-----Mensaje original-----",
    "-----Oorspronkelijk bericht-----",
    "-----Mensagem original-----",
    "-----Messaggio originale-----",
    "-----Ursprungligt meddelande-----",
    "-----Wiadomość oryginalna-----",
    "-----Исходное сообщение-----",
    "-----原始邮件-----",
    "-----元のメッセージ-----",
    "----- Original Message -----",
]


@pytest.mark.parametrize("separator", ORIGINALS)
def test_original_message_separators(separator):
    text = f"{REPLY}\n\n{separator}\nFrom: Check-ins\nSent: today\n\nHi Bea,\n"
    assert trim_reply(text) == REPLY


FORWARDS = [
    "---------- Forwarded message ---------",
    "---------- Weitergeleitete Nachricht ---------",
    "---------- Message transféré ---------",
    "---------- Mensaje reenviado ---------",
    "---------- Doorgestuurd bericht ---------",
    "---------- Mensagem encaminhada ---------",
    "---------- Messaggio inoltrato ---------",
    "---------- Vidarebefordrat meddelande ---------",
    "---------- Wiadomość przekazana dalej ---------",
    "---------- Пересылаемое сообщение ---------",
    "---------- 転送されたメッセージ ---------",
    "---------- 转发的邮件 ---------",
    "-------- Forwarded Message --------",
    "Begin forwarded message:",
    "Anfang der weitergeleiteten Nachricht:",
    "Début du message réexpédié :",
    "Inicio del mensaje reenviado:",
]


@pytest.mark.parametrize("separator", FORWARDS)
def test_forwarded_content_below_the_reply(separator):
    text = f"{REPLY}\n\n{separator}\nFrom: Someone <someone@example.com>\n\nOld news.\n"
    assert trim_reply(text) == REPLY


# --------------------------------------------------------------------------- signatures

MOBILE = [
    "Sent from my iPhone",
    "Von meinem iPhone gesendet",
    "Envoyé de mon iPhone",
    "Enviado desde mi iPhone",
    "Verzonden vanaf mijn iPhone",
    "Enviado do meu iPhone",
    "Inviato da iPhone",
    "Skickat från min iPhone",
    "Wysłane z iPhone'a",
    "Отправлено с iPhone",
    "iPhoneから送信",
    "发自我的iPhone",
    "Get Outlook for iOS",
    "Get Outlook for Android",
    "Sent from my Galaxy",
    "Sent from Yahoo Mail for iPhone",
]


@pytest.mark.parametrize("signature", MOBILE)
def test_mobile_signatures(signature):
    text = f"{REPLY}\n\n{signature}\n\nOn Tue, Mar 3, 2026, Check-ins wrote:\n{QUOTE}"
    assert trim_reply(text) == REPLY
    assert trim_reply(f"{REPLY}\n\n{signature}") == REPLY


def test_signature_delimiter_ends_the_reply():
    text = f"{REPLY}\n\n-- \nBea Boss\nHead of Sales\n+1 555 0100"
    assert trim_reply(text) == REPLY


SIGN_OFFS = [
    ("Best regards,", "Bea Boss\nHead of Sales | Acme Corp\n+1 555 0100\nbea@acme.example"),
    ("Thanks,", "Bea"),
    ("Cheers", "Bea"),
    ("Kind regards", "Bea Boss\nhttps://acme.example"),
    ("Mit freundlichen Grüßen", "Bea Becker\nTeamleiterin Entwicklung\nTel. +49 30 5555 0100"),
    ("Viele Grüße", "Bea"),
    ("Cordialement,", "Bea Bernard\nDirectrice commerciale"),
    ("Saludos,", "Bea Blanco"),
    ("Met vriendelijke groet,", "Bea de Boer"),
    ("Atenciosamente,", "Bea Batista\nGerente Comercial"),
    ("Cordiali saluti,", "Bea Bianchi"),
    ("Med vänliga hälsningar", "Bea Berg"),
    ("Pozdrawiam,", "Bea Borowska\nKierownik Działu IT"),
    ("С уважением,", "Беа Белова\nруководитель отдела продаж"),
    ("よろしくお願いします。", "馬場"),
    ("此致", "敬礼\n白蓓"),
]


@pytest.mark.parametrize(("sign_off", "block"), SIGN_OFFS, ids=[s for s, _ in SIGN_OFFS])
def test_sign_off_and_contact_block_are_dropped(sign_off, block):
    assert trim_reply(f"{REPLY}\n\n{sign_off}\n{block}\n") == REPLY


def test_a_sign_off_without_a_name_block_stays():
    # it may be all the person wrote to close; nothing follows it to call a signature
    assert trim_reply(f"{REPLY}\n\nThanks!") == f"{REPLY}\n\nThanks!"


def test_text_after_the_sign_off_keeps_the_sign_off():
    text = f"{REPLY}\n\nThanks,\nBea\n\nP.S. Can we move the next one to Friday?"
    assert trim_reply(text) == text
    text = f"{REPLY}\n\nThanks,\nsee you on Friday"
    assert trim_reply(text) == text


def test_a_greeting_is_not_a_sign_off():
    text = "Ciao,\n1. Ana ha chiuso il progetto.\n2. Niente."
    assert trim_reply(text) == text


def test_a_reply_that_is_only_a_sign_off_stays():
    assert trim_reply("Thanks,\nBea") == "Thanks,\nBea"


def test_the_senders_name_alone_closes_the_reply():
    text = f"{REPLY}\n\nBea\n\nOn Tue, Mar 3, 2026, Check-ins wrote:\n{QUOTE}"
    assert trim_reply(text, sender="Bea Boss") == REPLY
    assert trim_reply(f"{REPLY}\n\n- Bea B.", sender="Bea Boss") == REPLY
    assert trim_reply(f"{REPLY}\n\n馬場", sender="馬場 ビー") == REPLY
    # without the sender's name a short last line is the person's text
    assert trim_reply(f"{REPLY}\n\nBea") == f"{REPLY}\n\nBea"
    assert trim_reply(f"{REPLY}\n\nAgreed", sender="Bea Boss") == f"{REPLY}\n\nAgreed"


DISCLAIMERS = [
    "This email and any attachments are confidential and intended solely for the addressee. "
    "If you are not the intended recipient, please delete it and notify the sender.",
    "CONFIDENTIALITY NOTICE: The contents of this email message are confidential and "
    "intended only for the recipient specified in the message.",
    "Diese E-Mail enthält vertrauliche und/oder rechtlich geschützte Informationen. Wenn Sie "
    "nicht der richtige Adressat sind, informieren Sie bitte sofort den Absender.",
    "Ce message et toutes les pièces jointes sont confidentiels et établis à l'intention "
    "exclusive de ses destinataires.",
    "Este mensaje y sus anexos son confidenciales y están dirigidos exclusivamente a su "
    "destinatario.",
    "Dit e-mailbericht is vertrouwelijk en uitsluitend bestemd voor de geadresseerde.",
    "Questo messaggio e i suoi allegati sono riservati e destinati esclusivamente al "
    "destinatario indicato.",
    "Detta e-postmeddelande är konfidentiellt och endast avsett för mottagaren. Om du fått "
    "det av misstag, radera det.",
    "Ta wiadomość jest poufna i przeznaczona wyłącznie dla adresata. Jeśli nie jesteś "
    "adresatem, usuń ją.",
    "Это сообщение и любые вложения конфиденциальны и предназначены только для адресата.",
    "このメールは機密情報を含んでいます。宛先以外の方が受信された場合は、破棄してください。",
    "本邮件及其附件含有保密信息，仅限于发送给上面地址中列出的个人或群组。",
]


@pytest.mark.parametrize("disclaimer", DISCLAIMERS)
def test_legal_disclaimer_at_the_end_is_dropped(disclaimer):
    assert trim_reply(f"{REPLY}\n\n{disclaimer}\n") == REPLY
    text = f"{REPLY}\n\nBest regards,\nBea Boss\nAcme Corp\n\n{disclaimer}"
    assert trim_reply(text) == REPLY


def test_a_remark_about_confidentiality_is_kept():
    text = f"{REPLY}\n\nThis message is confidential, please keep it between us."
    assert trim_reply(text) == text


# --------------------------------------------------------------------------- own ">" lines


def test_own_gt_line_above_the_attribution_is_kept():
    own = "Quick notes from today:\n\n> 90% of target reached.\n\nAna carries the renewals."
    text = f"{own}\n\nOn Tue, Mar 3, 2026 at 10:30 AM Check-ins <c@example.com> wrote:\n{QUOTE}"
    assert trim_reply(text) == own


def test_own_gt_line_right_before_the_attribution_is_kept():
    own = "Quick notes from today:\n> 90% of target reached"
    text = f"{own}\n\nOn Tue, Mar 3, 2026 at 10:30 AM Check-ins <c@example.com> wrote:\n{QUOTE}"
    assert trim_reply(text) == own


def test_trailing_quote_without_an_attribution_is_dropped():
    assert trim_reply(f"{REPLY}\n\n{QUOTE}") == REPLY


def test_interleaved_answers_keep_their_quote():
    text = (
        "See below.\n\nOn Tue, Mar 3, 2026 at 10:30 AM Check-ins <c@example.com> wrote:\n"
        "> What went well?\n\nThe launch.\n\n> What could be better?\n\nSleep.\n"
    )
    assert trim_reply(text) == (
        "See below.\n\n> What went well?\n\nThe launch.\n\n> What could be better?\n\nSleep."
    )


def test_a_wrapped_quote_line_is_not_an_answer():
    text = (
        "Fine.\n\nOn Tue, Mar 3, 2026 at 10:30 AM Check-ins <c@example.com> wrote:\n"
        "> How did your check-in with Ana go? Reply to this email to document it, answer\n"
        "inline under each question.\n>\n> Thanks\n"
    )
    assert trim_reply(text) == "Fine."


# --------------------------------------------------------------------------- HTML clients


def _mail_html(html: str) -> str:
    raw = b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()
    return decode_message(raw).text


ORIGINAL_HTML = (
    "<p>Hi Bea,</p><ol><li>What went well since your last check-in?</li>"
    "<li>What is getting in the way?</li></ol>"
)

HTML_CLIENTS = {
    "gmail": (
        '<div dir="ltr">Ana did great this sprint.<div>Rating: 4</div></div><br>'
        '<div class="gmail_quote"><div dir="ltr" class="gmail_attr">On Tue, Mar 3, 2026 at '
        "10:30 AM Check-ins &lt;checkins@example.com&gt; wrote:<br></div>"
        '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex">'
        f"{ORIGINAL_HTML}</blockquote></div>"
    ),
    "outlook-desktop": (
        '<div class="WordSection1"><p class="MsoNormal">Ana did great this sprint.<o:p></o:p>'
        '</p><p class="MsoNormal">Rating: 4<o:p></o:p></p><p class="MsoNormal"><o:p>&nbsp;'
        '</o:p></p><div><div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt '
        '0cm 0cm 0cm"><p class="MsoNormal"><b>From:</b> Check-ins &lt;checkins@example.com&gt;'
        "<br><b>Sent:</b> Tuesday, March 3, 2026 10:30 AM<br><b>To:</b> Bea Boss<br>"
        "<b>Subject:</b> Check-in<o:p></o:p></p></div></div>"
        f'<p class="MsoNormal">Hi Bea,<o:p></o:p></p>{ORIGINAL_HTML}</div>'
    ),
    "outlook-web": (
        '<div dir="ltr">Ana did great this sprint.</div><div dir="ltr">Rating: 4</div>'
        '<div id="appendonsend"></div><hr style="display:inline-block;width:98%">'
        '<div id="divRplyFwdMsg" dir="ltr"><font face="Calibri"><b>From:</b> Check-ins '
        "&lt;checkins@example.com&gt;<br><b>Sent:</b> Tuesday, March 3, 2026 10:30<br>"
        "<b>To:</b> Bea Boss<br><b>Subject:</b> Check-in</font><div>&nbsp;</div></div>"
        f"<div>{ORIGINAL_HTML}</div>"
    ),
    "apple-mail": (
        '<div>Ana did great this sprint.<br>Rating: 4<br><div><br><blockquote type="cite">'
        "<div>On Mar 3, 2026, at 10:30, Check-ins &lt;checkins@example.com&gt; wrote:</div>"
        f'<br></blockquote></div><blockquote type="cite">{ORIGINAL_HTML}</blockquote></div>'
    ),
    "thunderbird": (
        "<p>Ana did great this sprint.<br>Rating: 4</p>"
        '<div class="moz-cite-prefix">On 3/3/26 10:30 AM, Check-ins wrote:<br></div>'
        f'<blockquote type="cite" cite="mid:x@example.com">{ORIGINAL_HTML}</blockquote>'
    ),
    "yahoo": (
        '<div class="ydp1"><div dir="ltr">Ana did great this sprint.</div><div dir="ltr">'
        'Rating: 4</div></div><div id="yahoo_quoted_1" class="yahoo_quoted">'
        '<div style="font-size:13px"><div>On Tuesday, March 3, 2026, 10:30:00 AM GMT+1, '
        "Check-ins &lt;checkins@example.com&gt; wrote:</div><div><br></div>"
        f'<div><div id="yiv1">{ORIGINAL_HTML}</div></div></div></div>'
    ),
    "proton": (
        "<div>Ana did great this sprint.</div><div>Rating: 4</div><br>"
        '<div class="protonmail_quote">------- Original Message -------<br>On Tuesday, '
        "March 3rd, 2026 at 10:30 AM, Check-ins &lt;checkins@example.com&gt; wrote:<br>"
        f'<blockquote class="protonmail_quote" type="cite">{ORIGINAL_HTML}</blockquote></div>'
    ),
}


@pytest.mark.parametrize("html", HTML_CLIENTS.values(), ids=HTML_CLIENTS.keys())
def test_html_client_quote_containers(html):
    text = _mail_html(f"<html><body>{html}</body></html>")
    assert trim_reply(text) == "Ana did great this sprint.\nRating: 4"


def test_html_quote_containers_come_out_as_quotes():
    """The quoted original of each client is a "> " block (Yahoo and Outlook on the web put
    no blockquote around it), so the trimmer and the inline extraction see a quote."""
    for client in ("gmail", "apple-mail", "thunderbird", "yahoo", "proton"):
        text = _mail_html(HTML_CLIENTS[client])
        assert "> 1. What went well since your last check-in?" in text, client


def test_html_outlook_paragraphs_are_lines():
    text = _html_to_text(
        '<p class="MsoNormal">Hallo,<o:p></o:p></p><p class="MsoNormal"><o:p>&nbsp;</o:p></p>'
        '<p class="MsoNormal">erste Zeile<o:p></o:p></p><p class="MsoNormal">zweite Zeile</p>'
    )
    assert text == "Hallo,\n\nerste Zeile\nzweite Zeile"


def test_html_inline_answers_between_quoted_questions():
    html = (
        '<div dir="ltr">Answers below.</div><div class="gmail_quote"><div class="gmail_attr">'
        "On Tue, Mar 3, 2026 at 10:30 AM Check-ins &lt;c@example.com&gt; wrote:</div>"
        '<blockquote class="gmail_quote"><ol><li>What went well since your last check-in?</li>'
        "</ol></blockquote><div>The launch.</div>"
        '<blockquote class="gmail_quote"><ol start="2"><li>What is getting in the way?</li></ol>'
        "</blockquote><div>Hiring.</div></div>"
    )
    questions = ["What went well since your last check-in?", "What is getting in the way?"]
    result = extract(_mail_html(html), questions)
    assert result.answers == {1: "The launch.", 2: "Hiring."}
    assert result.notes == "Answers below."


def test_html_outlook_list_paragraphs_are_list_items():
    text = _html_to_text(
        '<p class="MsoNormal">Actions:<o:p></o:p></p>'
        '<p class="MsoListParagraph" style="mso-list:l0 level1 lfo1"><![if !supportLists]>'
        '<span style="font-family:Symbol"><span style="mso-list:Ignore">·<span>&nbsp;&nbsp;'
        "</span></span></span><![endif]>Ana to send the deck by Friday<o:p></o:p></p>"
        '<p class="MsoListParagraph"><span style="mso-list:Ignore">2.<span>&nbsp; </span>'
        "</span>Second point<o:p></o:p></p>"
    )
    assert text == "Actions:\n- Ana to send the deck by Friday\n2. Second point"


def test_sign_off_with_the_senders_name_on_one_line():
    assert trim_reply(f"{REPLY}\n\nThanks, Bea", sender="Bea Boss") == REPLY
    assert trim_reply(f"{REPLY}\n\nCheers Bea B.\n+1 555 0100", sender="Bea Boss") == REPLY
    assert trim_reply(f"{REPLY}\n\nThanks, Ana", sender="Bea Boss") == f"{REPLY}\n\nThanks, Ana"


def test_the_senders_name_inside_a_list_is_text():
    text = "Who joined:\nAna\nBea"
    assert trim_reply(text, sender="Bea Boss") == text


def test_a_signature_under_the_quote_is_not_an_interleaved_answer():
    quote = "On Tue, Mar 3, 2026 at 10:30 AM Check-ins <c@example.com> wrote:\n> Hi Bea,\n> q?\n"
    text = f"{REPLY}\n\n{quote}\nBest,\nBea Boss\nHead of Sales"
    assert trim_reply(text) == REPLY
    assert trim_reply(f"{REPLY}\n\n{quote}\nBea Boss\nHead of Sales", sender="Bea Boss") == REPLY
