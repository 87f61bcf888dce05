"""A tenant's domains: the DNS records it needs, the checks of what DNS holds, validation and the
lifecycle (re-validation, notifications), and a receiver's judgement of relayed mail. Shared: the
admin side runs them on demand, the relay's own loop (relay/service/revalidator.py) on a schedule."""
