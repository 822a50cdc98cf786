"""Pure rules (windows, parsing, eligibility, dropout, judge maths, ranking, the market simulator): the standard
library and pydantic only.
"""
