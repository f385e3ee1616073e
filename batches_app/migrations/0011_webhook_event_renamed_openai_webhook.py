from django.db import migrations


class Migration(migrations.Migration):
    """OpenAI's inbound webhooks get a name of their own beside the callers' WebhookEvent."""

    dependencies = [
        ("batches_app", "0010_claude_gemini_prices"),
    ]

    operations = [
        migrations.RenameModel(old_name="WebhookEvent", new_name="OpenAIWebhook"),
        migrations.AlterModelOptions(
            name="openaiwebhook",
            options={
                "ordering": ["-received_at"],
                "verbose_name": "webhook from OpenAI",
                "verbose_name_plural": "webhooks from OpenAI",
            },
        ),
    ]
