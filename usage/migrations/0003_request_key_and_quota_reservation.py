"""Request ids held for the retention only (UsageRecord.request_key, unique per team, cleared after the
retention) and the database backend's stored reservations (issues 11 and 12)."""

from django.db import migrations, models
import django.db.models.deletion


def request_keys_from_request_ids(apps, schema_editor):
    # Every record held its id until now (unique per team): it keeps it until the release task runs.
    UsageRecord = apps.get_model("usage", "UsageRecord")
    UsageRecord.objects.update(request_key=models.F("request_id"))


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("usage", "0002_usage_record_request_hash"),
    ]

    operations = [
        migrations.AddField(
            model_name="usagerecord",
            name="request_key",
            field=models.CharField(blank=True, max_length=100, null=True),
        ),
        migrations.RunPython(request_keys_from_request_ids, migrations.RunPython.noop),
        migrations.RemoveConstraint(model_name="usagerecord", name="usage_record_team_request_unique"),
        migrations.AddConstraint(
            model_name="usagerecord",
            constraint=models.UniqueConstraint(fields=("team", "request_key"), name="usage_record_team_request_key_unique"),
        ),
        migrations.CreateModel(
            name="QuotaReservation",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("request_id", models.CharField(max_length=100)),
                ("request_hash", models.CharField(blank=True, default="", max_length=64)),
                ("tokens", models.BigIntegerField()),
                ("minute_start", models.DateTimeField()),
                ("day_start", models.DateTimeField()),
                ("period_start", models.DateTimeField(blank=True, null=True)),
                ("reserved_at", models.DateTimeField(db_index=True)),
                (
                    "team",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="+", to="accounts.team"
                    ),
                ),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(fields=("team", "request_id"), name="quota_reservation_team_request_unique")
                ],
            },
        ),
    ]
