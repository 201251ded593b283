"""The seed catalog: the starting point `seed_tiers` creates. Operators edit tiers in the admin
afterwards, and seeding never touches a tier or model that already exists."""

from __future__ import annotations

from datetime import date

FREE_TIER_SLUG = "free"
ASSISTANT_TIER_SLUG = "assistant"

SEED_MODELS: list[dict] = [
    {
        "model_id": "Llama-3.3-8B-Instruct",
        "display_name": "Llama 3.3 8B Instruct",
        "context_window": 128_000,
        "released_on": date(2024, 12, 6),
    },
    {
        "model_id": "Llama-3.3-70B-Instruct",
        "display_name": "Llama 3.3 70B Instruct",
        "context_window": 128_000,
        "released_on": date(2024, 12, 6),
    },
    {
        "model_id": "Llama-4-Scout-17B-16E-Instruct-FP8",
        "display_name": "Llama 4 Scout 17B-16E Instruct (FP8)",
        "context_window": 128_000,
        "released_on": date(2025, 4, 5),
    },
    {
        "model_id": "Llama-4-Maverick-17B-128E-Instruct-FP8",
        "display_name": "Llama 4 Maverick 17B-128E Instruct (FP8)",
        "context_window": 128_000,
        "released_on": date(2025, 4, 5),
    },
]

SEED_TIERS: list[dict] = [
    {
        "slug": FREE_TIER_SLUG,
        "name": "Free",
        "description": "Try the API with the small model. Hard monthly cap, no card needed.",
        "sort_order": 10,
        "is_paid": False,
        "price_cents": 0,
        "requests_per_minute": 10,
        "tokens_per_minute": 10_000,
        "requests_per_day": 500,
        "monthly_tokens": 1_000_000,
        "overage_policy": "block",
        "models": ["Llama-3.3-8B-Instruct"],
    },
    {
        # The paid consumer assistant subscription (the one the seed article says Meta plans for Meta AI):
        # chat in the playground, no API keys; its daily message limit is the requests-per-day limit,
        # which the playground meters on the same path as the API.
        "slug": ASSISTANT_TIER_SLUG,
        "name": "Assistant",
        "description": "Chat with Llama in the playground: the 70B model, 200 messages a day. No API access.",
        "sort_order": 15,
        "price_cents": 800,
        "includes_api_access": False,
        "requests_per_minute": 20,
        "tokens_per_minute": 40_000,
        "requests_per_day": 200,
        "monthly_tokens": 5_000_000,
        "overage_policy": "block",
        "models": ["Llama-3.3-8B-Instruct", "Llama-3.3-70B-Instruct"],
    },
    {
        "slug": "plus",
        "name": "Plus",
        "description": "For individuals: larger caps and the 70B and Scout models.",
        "sort_order": 20,
        "price_cents": 2_000,
        "trial_days": 7,
        "requests_per_minute": 60,
        "tokens_per_minute": 100_000,
        "requests_per_day": 5_000,
        "monthly_tokens": 20_000_000,
        "overage_policy": "block",
        "models": ["Llama-3.3-8B-Instruct", "Llama-3.3-70B-Instruct", "Llama-4-Scout-17B-16E-Instruct-FP8"],
    },
    {
        "slug": "pro",
        "name": "Pro",
        "description": "For developers shipping products: high limits, every model, overage billed.",
        "sort_order": 30,
        "price_cents": 20_000,
        "trial_days": 14,
        "requests_per_minute": 600,
        "tokens_per_minute": 1_000_000,
        "requests_per_day": 100_000,
        "monthly_tokens": 200_000_000,
        "overage_policy": "bill",
        "overage_cents_per_million_tokens": 60,
        "models": [m["model_id"] for m in SEED_MODELS],
    },
    {
        "slug": "enterprise",
        "name": "Enterprise",
        "description": "Custom contract terms, negotiated limits and invoicing. Not listed publicly.",
        "sort_order": 40,
        "price_cents": 500_000,
        "is_public": False,
        "requests_per_minute": 6_000,
        "tokens_per_minute": 20_000_000,
        "requests_per_day": None,
        "monthly_tokens": 5_000_000_000,
        "overage_policy": "bill",
        "overage_cents_per_million_tokens": 40,
        "models": [m["model_id"] for m in SEED_MODELS],
    },
]
