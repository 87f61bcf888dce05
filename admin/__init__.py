"""The admin side of accounton-relay: records, Excel export, DNS validation, roles and the `relay-admin` CLI."""
