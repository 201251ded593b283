from django.urls import path

from billing import views

urlpatterns = [
    path("billing/", views.billing_page, name="billing"),
    path("billing/checkout/<slug:tier_slug>/", views.billing_checkout, name="billing-checkout"),
    path("billing/invoices/<str:number>/", views.billing_invoice, name="billing-invoice"),
    path("billing/payment-method/", views.billing_payment_method, name="billing-payment-method"),
    path("billing/setup-intent/", views.billing_setup_intent, name="billing-setup-intent"),
    path("billing/cancel/", views.billing_cancel, name="billing-cancel"),
    path("billing/resume/", views.billing_resume, name="billing-resume"),
    path("stripe/webhook/", views.stripe_webhook, name="stripe-webhook"),
]
