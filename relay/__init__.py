"""accounton-relay: an outbound SMTP relay that forces each tenant's verified sender and DKIM-signs for it."""

__version__ = "0.1.0"
