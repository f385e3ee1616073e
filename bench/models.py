from django.db import models


class BareRow(models.Model):
    """The baseline's table: one row per body, found by the SHA-256 of the body."""

    fingerprint = models.CharField(max_length=64, unique=True)
    model = models.CharField(max_length=200)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "bench_bare"

    def __str__(self) -> str:
        return self.fingerprint
