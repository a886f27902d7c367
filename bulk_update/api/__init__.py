"""The API as the job speaks to it: the HTTP client (client.py), what an answer means
(answers.py), how retries are scheduled (retry.py), the rate limiter (ratelimit.py) and the
circuit breaker (breaker.py)."""
