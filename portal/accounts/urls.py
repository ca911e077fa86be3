from django.urls import path
from django.views.generic import TemplateView

urlpatterns = [
    path("login/", TemplateView.as_view(template_name="accounts/login.html"), name="login"),
    path("mfa/", TemplateView.as_view(template_name="accounts/login.html"), name="mfa"),
    path("set-password/<uidb64>/<token>/", TemplateView.as_view(template_name="accounts/login.html"), name="set_password"),
]
