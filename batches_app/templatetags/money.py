"""`usd`: an amount of money as an operator reads it, never `$0.0000` for a real cost."""

import math
from decimal import Decimal

from django import template

register = template.Library()


@register.filter
def usd(value) -> str:
    """$1,234.57 from a cent up; below it two significant digits ($0.00042); $0 for nothing."""
    amount = Decimal(value or 0)
    if amount == 0:
        return "$0"
    if abs(amount) >= Decimal("0.01"):
        return f"${amount:,.2f}"
    places = 1 - math.floor(math.log10(abs(float(amount))))
    return f"${amount:.{places}f}"
