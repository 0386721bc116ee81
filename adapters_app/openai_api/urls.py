from django.urls import path

from adapters_app.openai_api import views

app_name = "openai"

urlpatterns = [
    path("models", views.models, name="models"),
    path("completions", views.completions, name="completions"),
    path("chat/completions", views.chat_completions, name="chat-completions"),
]
