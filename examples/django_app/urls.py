"""The example's URLs."""

from django.urls import path

from examples.django_app import views

urlpatterns = [path("signups", views.signup)]
