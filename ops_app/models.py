from django.db import models

# Upper bounds (seconds) of the upstream latency histogram; the last bucket is +Inf (= count).
LATENCY_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def bucket_field(bound: float) -> str:
    return "le_" + f"{bound:g}".replace(".", "_")


class UpstreamCallStat(models.Model):
    """Counters of upstream calls, one row per (upstream, operation, outcome), shared by every
    process.

    Kept in the database rather than in process memory so that /metrics, served by any web
    process, sees the calls made by every scheduler process on every machine. Rows are only
    ever incremented with `F()` updates, so concurrent writers never lose a count.
    """

    upstream = models.CharField(max_length=64, default="openai")
    operation = models.CharField(max_length=64)
    # "ok", or the UpstreamError code ("timeout", "rate_limit_exceeded", "http_500", ...).
    outcome = models.CharField(max_length=100)
    count = models.PositiveBigIntegerField(default=0)
    seconds_sum = models.FloatField(default=0.0)
    le_0_1 = models.PositiveBigIntegerField(default=0)
    le_0_5 = models.PositiveBigIntegerField(default=0)
    le_1 = models.PositiveBigIntegerField(default=0)
    le_2_5 = models.PositiveBigIntegerField(default=0)
    le_5 = models.PositiveBigIntegerField(default=0)
    le_10 = models.PositiveBigIntegerField(default=0)
    le_30 = models.PositiveBigIntegerField(default=0)
    le_60 = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["upstream", "operation", "outcome"], name="one_stat_per_upstream_outcome"
            )
        ]

    def __str__(self) -> str:
        return f"{self.operation} {self.outcome}: {self.count}"
