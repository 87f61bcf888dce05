"""The Excel hand-over's words in Dutch (default), English and French: one `ExportTexts` per language.

Paragraphs are `str.format` templates; the fields they may use are listed on `ExportTexts`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportTexts:
    """Everything the export writes in words. Template fields:

    {name} {email} {domain} (as people read it) {records_sheet} {host} {target} {full} {doubled}
    {host_header} {value_header} {split_header}
    """

    records_sheet: str
    instructions_sheet: str
    sender_labels: tuple[str, str, str, str]  # Name, E-mail address, Domain, Domain (Unicode)
    headers: tuple[str, str, str, str, str, str, str, str, str, str]
    yes: str
    no: str
    purposes: dict[str, str]  # dkim, return-path, dmarc
    states: dict[str, str]  # KeyState values
    statuses: dict[str, str]  # CheckStatus values
    title: str
    intro: str
    untouched: str
    per_record_heading: str
    dkim: str
    dkim_next: str
    dkim_retiring: str
    return_path: str
    dmarc: str
    mistakes_heading: str
    mistake_double_domain: str
    mistake_quotes: str
    mistake_split: str
    mistake_cloudflare: str
    finish_heading: str
    validate: str


NL = ExportTexts(
    records_sheet="DNS-records",
    instructions_sheet="Instructies",
    sender_labels=("Naam", "E-mailadres", "Domein", "Domein (Unicode)"),
    headers=(
        "Type", "Host (zoals in het formulier van uw DNS-provider)", "Volledige naam", "Waarde",
        "Waarde voor zonebestanden (gesplitst)", "TTL", "Doel", "Verplicht",
        "Laatste validatie", "Gevalideerd op",
    ),
    yes="ja",
    no="nee",
    purposes={"dkim": "DKIM-sleutel", "return-path": "Retouradres (bounces, SPF)",
              "dmarc": "DMARC-beleid (advies)"},
    states={"active": "actief", "next": "volgende sleutel", "retiring": "wordt uitgefaseerd"},
    statuses={"ok": "in orde", "missing": "ontbreekt", "mismatch": "afwijkende waarde",
              "warning": "waarschuwing", "error": "kon niet controleren"},
    title="DNS-records voor {domain}",
    intro=(
        "{name} verstuurt e-mail als {email} via het boekhoudplatform. Zodat ontvangers die berichten "
        "vertrouwen, vragen wij u de records op het tabblad '{records_sheet}' toe te voegen aan de "
        "DNS-zone van {domain}."
    ),
    untouched=(
        "De bestaande records van het hoofddomein blijven ongewijzigd: MX, het SPF-record op {domain} "
        "zelf en de website. Alles wat wij vragen staat op namen onder het domein; er wordt niets vervangen."
    ),
    per_record_heading="Waarvoor elk record dient",
    dkim=(
        "{host} (TXT, verplicht): de publieke DKIM-sleutel. Ontvangers controleren daarmee de "
        "handtekening die het platform op elk bericht van {domain} zet."
    ),
    dkim_next=(
        "{host} (TXT, verplicht): de volgende DKIM-sleutel na een sleutelwissel. Publiceer hem naast "
        "de huidige sleutel; verwijder de huidige niet."
    ),
    dkim_retiring=(
        "{host} (TXT, niet meer verplicht): een oude DKIM-sleutel die nog berichten van voor de "
        "sleutelwissel controleert. Laat hem staan tot het platform meldt dat hij weg mag."
    ),
    return_path=(
        "{host} (CNAME, verplicht): verwijst naar {target}. Hier staat het retouradres van het platform, "
        "zodat bounces terugkomen en SPF slaagt; het SPF-record van {domain} zelf verandert niet."
    ),
    dmarc=(
        "{host} (TXT, alleen advies): een DMARC-beleid. Voeg het alleen toe als {domain} nog geen "
        "DMARC-record heeft. Staat er al een record op {host}, laat dat dan staan: niet vervangen en "
        "geen tweede toevoegen (twee DMARC-records tellen als geen)."
    ),
    mistakes_heading="Veelgemaakte fouten",
    mistake_double_domain=(
        "Vul de host in precies zoals in de kolom '{host_header}' (bijvoorbeeld {host}). Veel "
        "DNS-providers voegen {domain} zelf toe; wie de volledige naam {full} typt, krijgt {doubled}."
    ),
    mistake_quotes=(
        "Typ geen aanhalingstekens rond de waarde; het formulier van de provider voegt ze zelf toe "
        "waar nodig. Kopieer de waarde uit de kolom '{value_header}'."
    ),
    mistake_split=(
        "De DKIM-waarde is langer dan 255 tekens. De meeste providers aanvaarden haar in één stuk; "
        "sommige vragen stukken van hoogstens 255 tekens: gebruik dan de kolom '{split_header}' "
        "zoals ze is. Controleer dat er niets is afgeknipt."
    ),
    mistake_cloudflare=(
        "Cloudflare: zet het CNAME-record {host} op 'DNS only' (grijze wolk), niet op 'Proxied'."
    ),
    finish_heading="Daarna",
    validate=(
        "Staan de records erin, druk dan op Valideren in de instellingen van het platform. Nieuwe "
        "records kunnen enkele minuten tot enkele uren nodig hebben om overal zichtbaar te zijn; "
        "meldt Valideren vlak na het toevoegen dat een record ontbreekt, probeer het later opnieuw."
    ),
)

EN = ExportTexts(
    records_sheet="Records",
    instructions_sheet="Instructions",
    sender_labels=("Name", "E-mail address", "Domain", "Domain (Unicode)"),
    headers=(
        "Type", "Host (as entered in your DNS provider's form)", "Full name", "Value",
        "Value for zone files (split)", "TTL", "Purpose", "Required",
        "Last validation", "Validated at",
    ),
    yes="yes",
    no="no",
    purposes={"dkim": "DKIM key", "return-path": "Return path (bounces, SPF)",
              "dmarc": "DMARC policy (advice)"},
    states={"active": "active", "next": "next key", "retiring": "retiring"},
    statuses={"ok": "OK", "missing": "missing", "mismatch": "different value",
              "warning": "warning", "error": "could not check"},
    title="DNS records for {domain}",
    intro=(
        "{name} sends e-mail as {email} through the accounting platform. So that receivers trust "
        "those messages, please add the records on the sheet '{records_sheet}' to the DNS zone of {domain}."
    ),
    untouched=(
        "The main domain's existing records stay untouched: MX, the SPF record at {domain} itself, "
        "the website. Everything we ask for lives on names below the domain; nothing is replaced."
    ),
    per_record_heading="What each record is for",
    dkim=(
        "{host} (TXT, required): the DKIM public key. Receivers use it to check the signature the "
        "platform puts on every message from {domain}."
    ),
    dkim_next=(
        "{host} (TXT, required): the next DKIM key after a key change. Publish it next to the "
        "current key; do not remove the current one."
    ),
    dkim_retiring=(
        "{host} (TXT, no longer required): an old DKIM key that still checks messages sent before "
        "the key change. Leave it until the platform says it may go."
    ),
    return_path=(
        "{host} (CNAME, required): points to {target}. The platform's return address lives here, so "
        "bounces come back and SPF passes; the SPF record of {domain} itself does not change."
    ),
    dmarc=(
        "{host} (TXT, advice only): a DMARC policy. Add it only if {domain} has no DMARC record yet. "
        "If a record already exists at {host}, keep it: do not replace it and do not add a second "
        "one (two DMARC records count as none)."
    ),
    mistakes_heading="Common mistakes",
    mistake_double_domain=(
        "Enter the host exactly as in the column '{host_header}' (for example {host}). Many DNS "
        "providers append {domain} themselves; typing the full name {full} then gives {doubled}."
    ),
    mistake_quotes=(
        "Do not type quotes around the value; the provider's form adds them where needed. Copy the "
        "value from the column '{value_header}'."
    ),
    mistake_split=(
        "The DKIM value is longer than 255 characters. Most providers accept it in one piece; some "
        "need it split into strings of at most 255 characters: then use the column '{split_header}' "
        "as it is. Check that nothing was cut off."
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
)

FR = ExportTexts(
    records_sheet="Enregistrements DNS",
    instructions_sheet="Instructions",
    sender_labels=("Nom", "Adresse e-mail", "Domaine", "Domaine (Unicode)"),
    headers=(
        "Type", "Hôte (tel que saisi chez votre fournisseur DNS)", "Nom complet", "Valeur",
        "Valeur pour fichier de zone (découpée)", "TTL", "Rôle", "Obligatoire",
        "Dernière validation", "Validé le",
    ),
    yes="oui",
    no="non",
    purposes={"dkim": "Clé DKIM", "return-path": "Adresse de retour (rebonds, SPF)",
              "dmarc": "Politique DMARC (conseil)"},
    states={"active": "active", "next": "clé suivante", "retiring": "en retrait"},
    statuses={"ok": "OK", "missing": "absent", "mismatch": "valeur différente",
              "warning": "avertissement", "error": "vérification impossible"},
    title="Enregistrements DNS pour {domain}",
    intro=(
        "{name} envoie des e-mails en tant que {email} via la plateforme comptable. Pour que les "
        "destinataires fassent confiance à ces messages, veuillez ajouter les enregistrements de "
        "l'onglet '{records_sheet}' à la zone DNS de {domain}."
    ),
    untouched=(
        "Les enregistrements existants du domaine principal restent inchangés : MX, l'enregistrement "
        "SPF sur {domain} lui-même, le site web. Tout ce que nous demandons se trouve sur des noms "
        "sous le domaine ; rien n'est remplacé."
    ),
    per_record_heading="À quoi sert chaque enregistrement",
    dkim=(
        "{host} (TXT, obligatoire) : la clé publique DKIM. Les destinataires vérifient avec elle la "
        "signature que la plateforme appose sur chaque message de {domain}."
    ),
    dkim_next=(
        "{host} (TXT, obligatoire) : la clé DKIM suivante après un changement de clé. Publiez-la à "
        "côté de la clé actuelle ; ne supprimez pas celle-ci."
    ),
    dkim_retiring=(
        "{host} (TXT, plus obligatoire) : une ancienne clé DKIM qui vérifie encore les messages "
        "envoyés avant le changement de clé. Laissez-la jusqu'à ce que la plateforme indique qu'elle "
        "peut être supprimée."
    ),
    return_path=(
        "{host} (CNAME, obligatoire) : pointe vers {target}. L'adresse de retour de la plateforme se "
        "trouve ici, pour que les rebonds reviennent et que SPF réussisse ; l'enregistrement SPF de "
        "{domain} lui-même ne change pas."
    ),
    dmarc=(
        "{host} (TXT, simple conseil) : une politique DMARC. Ajoutez-la seulement si {domain} n'a pas "
        "encore d'enregistrement DMARC. S'il en existe déjà un sur {host}, gardez-le : ne le remplacez "
        "pas et n'en ajoutez pas un second (deux enregistrements DMARC équivalent à aucun)."
    ),
    mistakes_heading="Erreurs fréquentes",
    mistake_double_domain=(
        "Saisissez l'hôte exactement comme dans la colonne '{host_header}' (par exemple {host}). "
        "Beaucoup de fournisseurs DNS ajoutent {domain} eux-mêmes ; saisir le nom complet {full} "
        "donne alors {doubled}."
    ),
    mistake_quotes=(
        "Ne tapez pas de guillemets autour de la valeur ; le formulaire du fournisseur les ajoute si "
        "nécessaire. Copiez la valeur de la colonne '{value_header}'."
    ),
    mistake_split=(
        "La valeur DKIM dépasse 255 caractères. La plupart des fournisseurs l'acceptent d'un seul "
        "tenant ; certains exigent des chaînes d'au plus 255 caractères : utilisez alors la colonne "
        "'{split_header}' telle quelle. Vérifiez que rien n'a été coupé."
    ),
    mistake_cloudflare=(
        "Cloudflare : réglez l'enregistrement CNAME {host} sur « DNS only » (nuage gris), pas sur "
        "« Proxied »."
    ),
    finish_heading="Ensuite",
    validate=(
        "Une fois les enregistrements en place, cliquez sur Valider dans les paramètres de la "
        "plateforme. Les nouveaux enregistrements peuvent mettre de quelques minutes à quelques heures "
        "à être visibles partout ; si Valider signale un enregistrement absent juste après l'ajout, "
        "réessayez plus tard."
    ),
)

LANGUAGES: dict[str, ExportTexts] = {"nl": NL, "en": EN, "fr": FR}
DEFAULT_LANGUAGE = "nl"
