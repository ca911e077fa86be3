from django.urls import path

from portal.accounts import views

urlpatterns = [
    path("login/", views.LoginView.as_view(), name="login"),
    path("mfa/", views.MfaView.as_view(), name="mfa"),
    path("mfa/setup/", views.MfaSetupView.as_view(), name="mfa_setup"),
    path("logout/", views.LogoutView.as_view(), name="logout"),
    path("set-password/<uidb64>/<token>/", views.SetPasswordView.as_view(), name="set_password"),
]
