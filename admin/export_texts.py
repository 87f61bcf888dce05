"""The Excel hand-over's words in Dutch (default), English and French: one `ExportTexts` per language.

Paragraphs are `str.format` templates; the fields they may use are listed on `ExportTexts`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class ExportTexts:
    """Everything the export writes in words. Template fields:

    {name} {email} {domain} (as people read it) {records_sheet} {host} {target} {full} {doubled}
    {host_header} {value_header} {split_header} {purpose_header} {status_header} {diagnosis_header};
    {until} (a retiring key's remove-after time) in `dkim_retiring_until`, `dkim_retired` and
    `key_keep_until`, `key_removable_since`.
    """

    records_sheet: str
    instructions_sheet: str
    sender_labels: tuple[str, str, str, str]  # Name, E-mail address, Domain, Domain (Unicode)
    # Type, Host, Full name, Value, Value for zone files, TTL, Purpose, Required,
    # Last validation, Diagnosis, Validated at
    headers: tuple[str, str, str, str, str, str, str, str, str, str, str]
    yes: str
    no: str
    purposes: dict[str, str]  # dkim, return-path, dmarc
    states: dict[str, str]  # KeyState values
    key_publish_now: str  # after a next key's state in the Purpose cell
    key_keep_until: str  # after a retiring key's state, before its remove-after time
    key_removable_since: str  # after a retiring key's state, once that time has passed
    statuses: dict[str, str]  # CheckStatus values
    title: str
    intro: str
    untouched: str
    per_record_heading: str
    dkim: str
    dkim_next: str
    dkim_retiring: str  # a retiring key without a remove-after time
    dkim_retiring_until: str
    dkim_retired: str
    return_path: str
    dmarc: str
    rotation_heading: str  # only when a key change is under way (a next or retiring key)
    rotation: str
    mistakes_heading: str
    mistake_double_domain: str
    mistake_quotes: str
    mistake_split: str
    mistake_cloudflare: str
    finish_heading: str
    validate: str
    results: str


def french_spacing(text: str) -> str:
    """French typography: a no-break space before : ; ? ! and inside « », so no line starts with one."""
    for plain, kept in ((" :", "\u00a0:"), (" ;", "\u00a0;"), (" ?", "\u00a0?"), (" !", "\u00a0!"),
                        ("« ", "«\u00a0"), (" »", "\u00a0»")):
        text = text.replace(plain, kept)
    return text


def _french(texts: ExportTexts) -> ExportTexts:
    """`texts` with French spacing in every sentence (sheet names and headers carry none)."""
    spaced: dict[str, Any] = {
        field.name: french_spacing(value) for field in fields(texts)
        if isinstance(value := getattr(texts, field.name), str)
    }
    return replace(texts, **spaced)


NL = ExportTexts(
    records_sheet="DNS-records",
    instructions_sheet="Instructies",
    sender_labels=("Naam", "E-mailadres", "Domein", "Domein (Unicode)"),
    headers=(
        "Type", "Host (zoals u die invult bij uw DNS-provider)", "Volledige naam", "Waarde",
        "Waarde voor zonebestanden (stukken van max. 255 tekens)", "TTL", "Doel", "Verplicht",
        "Laatste validatie", "Diagnose (Engels)", "Datum validatie",
    ),
    yes="ja",
    no="nee",
    purposes={"dkim": "DKIM-sleutel", "return-path": "Retouradres (bounces, SPF)",
              "dmarc": "DMARC-beleid (advies)"},
    states={"active": "actief", "next": "volgende sleutel", "retiring": "wordt uitgefaseerd"},
    key_publish_now="nu publiceren",
    key_keep_until="laten staan tot {until}",
    key_removable_since="mag weg sinds {until}",
    statuses={"ok": "in orde", "missing": "ontbreekt", "mismatch": "afwijkende waarde",
              "warning": "waarschuwing", "error": "kon niet worden gecontroleerd"},
    title="DNS-records voor {domain}",
    intro=(
        "{name} verstuurt e-mail vanaf {email} via het boekhoudplatform. Om ervoor te zorgen dat "
        "ontvangers deze berichten vertrouwen, vragen we u de records op het tabblad "
        "'{records_sheet}' toe te voegen aan de DNS-zone van {domain}."
    ),
    untouched=(
        "De bestaande records van {domain} blijven ongewijzigd: de MX-records, het SPF-record op "
        "{domain} zelf en de records van de website. Alle records die we vragen, komen op namen "
        "onder het domein; u hoeft dus niets te vervangen."
    ),
    per_record_heading="Waar elk record voor dient",
    dkim=(
        "{host} (TXT, verplicht): de publieke DKIM-sleutel. Hiermee controleren ontvangers de "
        "digitale handtekening die het platform onder elk bericht van {domain} zet."
    ),
    dkim_next=(
        "{host} (TXT, verplicht): de nieuwe DKIM-sleutel voor een sleutelwissel. Publiceer deze "
        "naast de huidige sleutel en laat de huidige staan."
    ),
    dkim_retiring=(
        "{host} (TXT, niet meer verplicht): een oude DKIM-sleutel, waarmee berichten van vóór de "
        "sleutelwissel nog worden gecontroleerd. Laat dit record staan totdat het platform meldt "
        "dat het weg kan."
    ),
    dkim_retiring_until=(
        "{host} (TXT, niet meer verplicht): de vorige DKIM-sleutel, waarmee berichten van vóór de "
        "sleutelwissel nog worden gecontroleerd. Laat dit record staan tot {until}; daarna kunt u "
        "het verwijderen."
    ),
    dkim_retired=(
        "{host} (TXT, niet meer nodig): een oude DKIM-sleutel van vóór een sleutelwissel. Sinds "
        "{until} wordt hij niet meer gebruikt; u kunt dit record nu verwijderen."
    ),
    return_path=(
        "{host} (CNAME, verplicht): verwijst naar {target}. Dit is het retouradres (return-path) "
        "van het platform: bounces komen hier terug en SPF wordt op deze naam gecontroleerd. Het "
        "SPF-record van {domain} zelf hoeft u niet aan te passen."
    ),
    dmarc=(
        "{host} (TXT, advies): een DMARC-beleid. Voeg dit record alleen toe als {domain} nog geen "
        "DMARC-record heeft. Staat er al een DMARC-record op {host}, laat dat dan staan: niet "
        "vervangen en geen tweede toevoegen (bij twee DMARC-records negeren ontvangers ze allebei)."
    ),
    rotation_heading="Sleutelwissel",
    rotation=(
        "Het platform vervangt zijn DKIM-sleutel af en toe door een nieuwe. De nieuwe sleutel (de "
        "volgende sleutel) krijgt een eigen naam: publiceer hem naast de huidige sleutel en laat de "
        "huidige staan. Het platform controleert de DNS en ondertekent vanaf de validatie die de "
        "nieuwe sleutel vindt met die sleutel. De oude sleutel blijft daarna nog een tijd nodig, "
        "zodat berichten van vóór de wissel nog kunnen worden gecontroleerd. In de kolom "
        "'{purpose_header}' op het tabblad '{records_sheet}' staat tot wanneer; na die datum kunt u "
        "het oude record verwijderen."
    ),
    mistakes_heading="Veelgemaakte fouten",
    mistake_double_domain=(
        "Vul als host alleen in wat in de kolom '{host_header}' staat (bijvoorbeeld {host}). De "
        "meeste DNS-providers zetten er zelf {domain} achter; wie de volledige naam {full} invult, "
        "krijgt dan {doubled}."
    ),
    mistake_quotes=(
        "Typ geen aanhalingstekens rond de waarde: het formulier van de provider zet die er zelf "
        "omheen als dat nodig is. Kopieer de waarde uit de kolom '{value_header}'."
    ),
    mistake_split=(
        "De DKIM-waarde is langer dan 255 tekens. Bij de meeste providers plakt u de waarde uit de "
        "kolom '{value_header}' in zijn geheel in één veld. Accepteert het formulier zo'n lange "
        "waarde niet, of vraagt het om losse stukken, neem dan de stukken uit de kolom "
        "'{split_header}' over, in dezelfde volgorde en zonder iets toe te voegen. Alleen in een "
        "zonebestand (BIND) komt elk stuk tussen dubbele aanhalingstekens, naast elkaar op één "
        "regel: \"stuk 1\" \"stuk 2\". Controleer na het opslaan of de waarde niet is ingekort."
    ),
    mistake_cloudflare=(
        "Cloudflare: zet het CNAME-record {host} op 'DNS only' (grijze wolk), niet op 'Proxied'."
    ),
    finish_heading="Tot slot",
    validate=(
        "Zijn de records toegevoegd? Klik dan op Valideren in de instellingen van het platform. Het "
        "kan enkele minuten tot enkele uren duren voordat nieuwe records overal zichtbaar zijn. "
        "Meldt Valideren direct na het toevoegen dat een record ontbreekt, probeer het dan later "
        "nog eens."
    ),
    results=(
        "Na een validatie staat bij elk record op het tabblad '{records_sheet}' de uitkomst, in de "
        "kolom '{status_header}', en wat er nog moet gebeuren, in de kolom '{diagnosis_header}'. "
        "Krijgt u dit bestand terug na een mislukte validatie, dan ziet u daar wat er moet worden "
        "aangepast."
    ),
)

EN = ExportTexts(
    records_sheet="Records",
    instructions_sheet="Instructions",
    sender_labels=("Name", "E-mail address", "Domain", "Domain (Unicode)"),
    headers=(
        "Type", "Host (as entered in your DNS provider's form)", "Full name", "Value",
        "Value for zone files (pieces of at most 255 characters)", "TTL", "Purpose", "Required",
        "Last validation", "Diagnosis", "Validated at",
    ),
    yes="yes",
    no="no",
    purposes={"dkim": "DKIM key", "return-path": "Return path (bounces, SPF)",
              "dmarc": "DMARC policy (advice)"},
    states={"active": "active", "next": "next key", "retiring": "retiring"},
    key_publish_now="publish now",
    key_keep_until="keep until {until}",
    key_removable_since="may be removed since {until}",
    statuses={"ok": "OK", "missing": "missing", "mismatch": "different value",
              "warning": "warning", "error": "could not check"},
    title="DNS records for {domain}",
    intro=(
        "{name} sends e-mail as {email} through the accounting platform. So that receivers trust "
        "those messages, please add the records on the sheet '{records_sheet}' to the DNS zone of "
        "{domain}."
    ),
    untouched=(
        "The existing records of {domain} stay as they are: MX, the SPF record at {domain} itself, "
        "the website. Everything we ask for lives on names below the domain; nothing is replaced."
    ),
    per_record_heading="What each record is for",
    dkim=(
        "{host} (TXT, required): the DKIM public key. Receivers use it to check the signature the "
        "platform puts on every message from {domain}."
    ),
    dkim_next=(
        "{host} (TXT, required): the next DKIM key, for a key change. Publish it next to the "
        "current key; do not remove the current one."
    ),
    dkim_retiring=(
        "{host} (TXT, no longer required): an old DKIM key that still checks messages sent before "
        "the key change. Leave it until the platform says it may go."
    ),
    dkim_retiring_until=(
        "{host} (TXT, no longer required): the previous DKIM key, which still checks messages sent "
        "before the key change. Leave it in place until {until}; after that you may delete it."
    ),
    dkim_retired=(
        "{host} (TXT, no longer needed): an old DKIM key from before a key change. It has not been "
        "needed since {until}; you may delete this record now."
    ),
    return_path=(
        "{host} (CNAME, required): points to {target}. This is the platform's return path: bounces "
        "come back here and SPF is checked on this name. The SPF record of {domain} itself does not "
        "change."
    ),
    dmarc=(
        "{host} (TXT, advice only): a DMARC policy. Add it only if {domain} has no DMARC record yet. "
        "If a record already exists at {host}, keep it: do not replace it and do not add a second "
        "one (receivers ignore both when there are two)."
    ),
    rotation_heading="Key change",
    rotation=(
        "The platform replaces its DKIM key from time to time. The new key (the next key) has a "
        "name of its own: publish it beside the current key and leave the current one in place. "
        "The platform checks DNS, and from the validation that finds the new key it signs with it. "
        "The old key is still needed for a while after that, so that messages signed before the "
        "change can still be checked. Until when is in the column '{purpose_header}' on the sheet "
        "'{records_sheet}'; after that date you may delete the old record."
    ),
    mistakes_heading="Common mistakes",
    mistake_double_domain=(
        "Enter the host exactly as in the column '{host_header}' (for example {host}). Most DNS "
        "providers append {domain} themselves; typing the full name {full} then gives {doubled}."
    ),
    mistake_quotes=(
        "Do not type quotes around the value: the provider's form adds them where needed. Copy the "
        "value from the column '{value_header}'."
    ),
    mistake_split=(
        "The DKIM value is longer than 255 characters. Most providers' forms take it in one piece, "
        "in one field, from the column '{value_header}'. If the form refuses that many characters "
        "or asks for separate strings, enter the pieces from the column '{split_header}' instead, "
        "in that order, adding nothing. Only in a zone file (BIND) does each piece go between "
        "double quotes, side by side on one line: \"piece 1\" \"piece 2\". Afterwards check that "
        "the value was not cut off."
    ),
    mistake_cloudflare=(
        "Cloudflare: set the CNAME record {host} to 'DNS only' (grey cloud), not 'Proxied'."
    ),
    finish_heading="Afterwards",
    validate=(
        "When the records are in place, press Validate in the platform's settings. New records can "
        "take from a few minutes to a few hours to be visible everywhere; if Validate reports a "
        "record missing right after you added it, try again later."
    ),
    results=(
        "After a validation, the sheet '{records_sheet}' shows the outcome for each record in the "
        "column '{status_header}', and what still needs doing in the column '{diagnosis_header}'. "
        "When this file comes back after a failed check, that is where to look for the fix."
    ),
)

FR = _french(ExportTexts(
    records_sheet="Enregistrements DNS",
    instructions_sheet="Instructions",
    sender_labels=("Nom", "Adresse e-mail", "Domaine", "Domaine (Unicode)"),
    headers=(
        "Type", "Hôte (tel que saisi chez votre fournisseur DNS)", "Nom complet", "Valeur",
        "Valeur pour fichier de zone (chaînes de 255 caractères max.)", "TTL", "Rôle",
        "Obligatoire", "Dernière validation", "Diagnostic (en anglais)", "Validé le",
    ),
    yes="oui",
    no="non",
    purposes={"dkim": "Clé DKIM", "return-path": "Adresse de retour (rebonds, SPF)",
              "dmarc": "Politique DMARC (conseil)"},
    states={"active": "active", "next": "clé suivante", "retiring": "en retrait"},
    key_publish_now="à publier maintenant",
    key_keep_until="à conserver jusqu'au {until}",
    key_removable_since="peut être supprimée depuis le {until}",
    statuses={"ok": "OK", "missing": "absent", "mismatch": "valeur différente",
              "warning": "avertissement", "error": "vérification impossible"},
    title="Enregistrements DNS pour {domain}",
    intro=(
        "{name} envoie des e-mails depuis l'adresse {email} via la plateforme comptable. Pour que "
        "les destinataires fassent confiance à ces messages, veuillez ajouter les enregistrements "
        "de l'onglet « {records_sheet} » à la zone DNS du domaine {domain}."
    ),
    untouched=(
        "Les enregistrements existants du domaine {domain} ne changent pas : MX, l'enregistrement "
        "SPF du domaine lui-même, le site web. Tous les enregistrements demandés se trouvent sur des noms "
        "sous {domain} ; vous n'avez rien à remplacer."
    ),
    per_record_heading="À quoi sert chaque enregistrement",
    dkim=(
        "{host} (TXT, obligatoire) : la clé publique DKIM. Les destinataires s'en servent pour "
        "vérifier la signature que la plateforme appose sur chaque message envoyé depuis {domain}."
    ),
    dkim_next=(
        "{host} (TXT, obligatoire) : la prochaine clé DKIM, pour un changement de clé. Publiez-la "
        "en plus de la clé actuelle, sans supprimer cette dernière."
    ),
    dkim_retiring=(
        "{host} (TXT, plus obligatoire) : une ancienne clé DKIM, qui sert encore à vérifier les "
        "messages envoyés avant le changement de clé. Conservez-la jusqu'à ce que la plateforme "
        "indique qu'elle peut être supprimée."
    ),
    dkim_retiring_until=(
        "{host} (TXT, plus obligatoire) : la clé DKIM précédente, qui sert encore à vérifier les "
        "messages envoyés avant le changement de clé. Conservez-la jusqu'au {until} ; vous pourrez "
        "ensuite la supprimer."
    ),
    dkim_retired=(
        "{host} (TXT, plus nécessaire) : une ancienne clé DKIM, antérieure à un changement de clé. "
        "Elle ne sert plus depuis le {until} ; vous pouvez supprimer cet enregistrement."
    ),
    return_path=(
        "{host} (CNAME, obligatoire) : pointe vers {target}. C'est l'adresse de retour "
        "(return-path) de la plateforme : les rebonds y reviennent et SPF est vérifié sur ce nom. "
        "L'enregistrement SPF du domaine {domain} lui-même ne change pas."
    ),
    dmarc=(
        "{host} (TXT, facultatif) : une politique DMARC. Ajoutez-la seulement si {domain} n'a pas "
        "encore d'enregistrement DMARC. S'il en existe déjà un sur {host}, gardez-le : ne le "
        "remplacez pas et n'en ajoutez pas un second (s'il y en a deux, les destinataires les "
        "ignorent tous les deux)."
    ),
    rotation_heading="Changement de clé",
    rotation=(
        "La plateforme remplace de temps en temps sa clé DKIM. La nouvelle clé (la clé suivante) "
        "porte un nom qui lui est propre : publiez-la à côté de la clé actuelle, sans supprimer "
        "cette dernière. La plateforme vérifie le DNS et, dès la validation qui trouve la nouvelle "
        "clé, signe avec celle-ci. L'ancienne clé reste nécessaire quelque temps encore, pour que "
        "les messages signés avant le changement puissent toujours être vérifiés. La colonne "
        "« {purpose_header} » de l'onglet « {records_sheet} » indique jusqu'à quand ; passé cette "
        "date, vous pouvez supprimer l'ancien enregistrement."
    ),
    mistakes_heading="Erreurs fréquentes",
    mistake_double_domain=(
        "Saisissez l'hôte exactement comme dans la colonne « {host_header} » (par exemple {host}). "
        "La plupart des fournisseurs DNS ajoutent {domain} d'eux-mêmes ; saisir le nom complet "
        "{full} donne alors {doubled}."
    ),
    mistake_quotes=(
        "Ne tapez pas de guillemets autour de la valeur : le formulaire du fournisseur les ajoute "
        "si nécessaire. Copiez la valeur de la colonne « {value_header} »."
    ),
    mistake_split=(
        "La valeur DKIM dépasse 255 caractères. La plupart des formulaires l'acceptent d'un seul "
        "bloc, dans un seul champ, depuis la colonne « {value_header} ». Si le formulaire refuse une "
        "valeur aussi longue ou demande des chaînes séparées, saisissez plutôt les chaînes de la "
        "colonne « {split_header} », dans cet ordre, sans rien ajouter. Ce n'est que dans un fichier "
        "de zone (BIND) que chaque chaîne se met entre guillemets droits, côte à côte sur une "
        "seule ligne : \"chaîne 1\" \"chaîne 2\". Vérifiez ensuite que la valeur n'a pas été "
        "tronquée."
    ),
    mistake_cloudflare=(
        "Cloudflare : réglez l'enregistrement CNAME {host} sur « DNS only » (nuage gris), et non "
        "sur « Proxied »."
    ),
    finish_heading="Ensuite",
    validate=(
        "Une fois les enregistrements en place, cliquez sur Valider dans les paramètres de la "
        "plateforme. Les nouveaux enregistrements peuvent mettre de quelques minutes à quelques "
        "heures à être visibles partout ; si Valider signale un enregistrement absent juste après "
        "l'ajout, réessayez plus tard."
    ),
    results=(
        "Après une validation, l'onglet « {records_sheet} » indique pour chaque enregistrement le "
        "résultat, dans la colonne « {status_header} », et ce qu'il reste à corriger, dans la "
        "colonne « {diagnosis_header} ». Si ce fichier vous revient après un échec, c'est là que "
        "vous trouverez la correction."
    ),
))

LANGUAGES: dict[str, ExportTexts] = {"nl": NL, "en": EN, "fr": FR}
DEFAULT_LANGUAGE = "nl"
