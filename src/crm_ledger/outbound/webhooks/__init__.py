"""Signed webhooks: change-feed events delivered to subscribers' URLs as Standard Webhooks.

Modules: `secrets` (signing secrets, encrypted at rest), `urls` (SSRF checks), `schemas`,
`subscriptions` (the service behind `/v1/webhook-subscriptions`), `dispatcher` (the worker).
"""
