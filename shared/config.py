"""Configuration from `RENDERFARM_*` environment variables, in one place.

Each process reads its `Settings()` once, at its entry point, and passes them down: nothing
below reads the environment on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from shared.sentinel import is_sentinel_url, master_client, parse_sentinel_url
from shared.vocabulary import Hardware


class Settings(BaseSettings):
    # hide_input_in_errors: an invalid setting's error names it without echoing its value,
    # which may hold a password (a Redis URL's).
    model_config = SettingsConfigDict(
        env_prefix="RENDERFARM_", extra="ignore", hide_input_in_errors=True
    )

    # redis://, rediss://, unix://, or Redis Sentinel: sentinel://host:26379;sentinel://...
    redis_url: str = "redis://127.0.0.1:6379/0"
    # With a sentinel:// redis_url: the name the sentinels monitor the master under, and the
    # sentinels' own password if they require one (the URL's password is the Redis servers').
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: SecretStr | None = None
    # file:///abs/path or s3://bucket/prefix
    storage_url: str = Field(default_factory=lambda: f"file://{Path('var/outputs').resolve()}")
    models_dir: Path = Path("var/models")
    # The model store in an object store instead: s3://bucket/prefix (the same endpoint and
    # credentials as storage). "" = the local folder `models_dir`.
    models_url: str = ""
    # Workers of an object-store model store: their host's disk cache of fetched models
    # (shared by the workers of one host), and its size budget in MiB (least recently used
    # files not in use by a job are removed beyond it).
    model_cache_dir: Path = Path("var/model-cache")
    model_cache_mb: int = 51200
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None

    # Limits a submission is checked against.
    max_width: int = 2048
    max_height: int = 2048
    max_steps: int = 150
    max_batch_size: int = 8
    # Every request does bounded work: the most pixels of one output image (a hires fix's
    # second pass, an upscale's target), of one input image (checked before it is decoded),
    # and the largest request body in MiB (413 above it).
    max_output_pixels: int = 4096 * 4096
    max_input_pixels: int = 4096 * 4096
    max_request_mb: int = 48

    # Model cache budgets per worker process, in MiB (RAM always; VRAM on CUDA workers).
    cache_ram_mb: int = 8192
    cache_vram_mb: int = 0  # 0: the GPU's total memory less a working reserve
    # What a full cache evicts: "cost" weighs use count, reload time and size
    # (GreedyDual-Size-Frequency, worker/eviction.py); "lru" the least recently used.
    cache_policy: Literal["cost", "lru"] = "cost"
    # GPU workers: run a checkpoint with diffusers' model CPU offload (its components take
    # turns on the GPU) when it is larger than the VRAM budget ("auto"), always, or never.
    cpu_offload: Literal["auto", "always", "never"] = "auto"

    # Workers publish a heartbeat this often; one missing for 3 intervals ages out.
    heartbeat_s: float = 2.0
    # A running attempt's lease, renewed by the heartbeat; a dead worker's job is
    # requeued once its lease expires.
    lease_s: float = 10.0
    # Attempts a job may start before it is failed as a poison job.
    max_attempts: int = 3
    # A job may wait this long for a busy worker that already holds its model before
    # it goes to an idle worker that must load it (bounded unfairness of affinity).
    affinity_wait_s: float = 3.0
    # How long storage errors are retried (with backoff) before a job fails.
    storage_retry_s: float = 600.0
    # A running job that makes no progress (no denoising step, no upscaled tile) for this
    # long is given up by its worker's watchdog: the lease lapses and another worker runs
    # it. Model loads and output uploads do not count as silence.
    stall_s: float = 1800.0

    # CPU threads torch may use in a worker (0: torch's default, every core). Set it to
    # cores / workers when several workers share a machine or a container CPU limit.
    torch_threads: int = 0
    # CPU workers: "bf16" runs every diffusion job under torch.autocast (matmuls and
    # convolutions in bfloat16; fast on AMX / AVX512-BF16 CPUs, emulated and slow elsewhere).
    torch_cpu_precision: Literal["f32", "bf16"] = "f32"

    # OpenVINO workers: where converted IR and compiled blobs are cached (keep it on a
    # persistent volume), and the OpenVINO device (CPU, GPU for an Intel GPU).
    openvino_cache_dir: Path = Path("var/openvino-cache")
    openvino_device: str = "CPU"
    # What OpenVINO computes in: "auto" is bf16 where the device reports BF16 among its
    # optimization capabilities (AMX / AVX512-BF16 CPUs), else f32. A model part with
    # constants beyond bf16's range (an old CLIP export's mask) compiles in f32 regardless.
    openvino_precision: Literal["auto", "f32", "bf16"] = "auto"

    # Longest a single job may run: a job still rendering after this long fails (checked at
    # every step and tile). The broker's visibility timeout sits above it.
    job_time_limit_s: int = 3600

    # --- Retention (scheduler/retention.py) ---
    # A finished job is deleted, with its outputs, this many days after it finished (0: kept
    # until someone deletes it).
    keep_jobs_days: float = Field(default=0, ge=0)

    # --- The live events stream (GET /api/v1/events) and webhooks (scheduler/notify.py) ---
    # A comment line is sent this often on an idle stream (proxies and clients keep it open,
    # and a client that went away is noticed).
    events_heartbeat_s: float = 15.0
    # A stream is closed after this long; the browser's EventSource reconnects with
    # Last-Event-ID and misses nothing.
    events_max_s: float = 300.0
    # A webhook POST is tried this many times, waiting webhook_backoff_s, then twice that, ...
    webhook_attempts: int = 4
    webhook_backoff_s: float = 2.0
    webhook_timeout_s: float = 5.0
    # A member's webhook may be on loopback, a private network or link-local (a cloud's
    # metadata service): off, since the scheduler would POST there from inside the farm.
    webhook_allow_private: bool = False

    # --- The SD-WebUI API and the HTTP server (dashboard/sdapi/, dashboard/server.py) ---
    # A blocking /sdapi/v1 generation call waits at most this long for its job (queue time
    # and run time); then the job is canceled and the call answers 504. Above the longest job.
    sdapi_wait_s: float = 7200.0
    # The checkpoint a caller gets until it sets `sd_model_checkpoint` ("": the first one in
    # the store).
    sdapi_default_model: str = ""
    # The most images one extra-batch-images call may carry (each is a job or a resize).
    sdapi_max_images: int = 100
    # waitress: threads serving requests (each blocking call and each event stream holds
    # one), most open connections, and how long an idle connection is kept. A connection
    # with a request in progress is never closed by the server, however long it blocks.
    http_threads: int = 128
    # Event streams and blocking SD-WebUI calls one account may have open at once on a server
    # process (dashboard/holds.py); all accounts together get 3/4 of http_threads.
    http_held_per_account: int = Field(default=16, ge=1)
    http_connection_limit: int = 1000
    http_channel_timeout_s: int = 120
    # Server processes on the one port, each with those threads and that connection limit
    # (0: one per usable core, at most 4). Above 1, one more process watches them.
    http_processes: int = Field(default=0, ge=0, le=64)
    # On SIGTERM (or a first Ctrl-C) the server stops accepting at once and lets requests in
    # progress finish for at most this long, then exits; event streams end at once. Keep it
    # below the orchestrator's kill timeout (Kubernetes: terminationGracePeriodSeconds, 30).
    http_grace_s: float = Field(default=25.0, ge=0)

    # --- Operations (dashboard/metrics.py, scheduler/census.py) ---
    # For autoscaling (GET /api/v1/fleet/demand), jobs that leave the class to the dispatcher
    # (`auto`) count as demand for this class.
    scale_auto_class: Hardware = Hardware.CPU
    # `renderfarm scheduler` serves its own /metrics on this port (0: off), saying whether it
    # holds the dispatcher lock.
    scheduler_metrics_port: int = 0

    # --- Accounts, sign-in and quotas (dashboard/accounts.py, dashboard/auth.py) ---
    # Flask's SECRET_KEY (signs session cookies); unset: one is generated once and kept in
    # Redis, so every dashboard replica shares it.
    secret_key: SecretStr | None = None
    # The client commands (`renderfarm submit`, `cancel`, ...) authenticate with this token,
    # else with the one in `token_file` (written by `renderfarm up` for its local admin).
    token: SecretStr | None = None
    token_file: Path = Path("var/renderfarm.token")
    # ...and talk to the farm at this address (their --api), else at the one in `api_file`
    # (written by `renderfarm up` once its dashboard answers), else at http://127.0.0.1:8000.
    api_url: str | None = None
    api_file: Path = Path("var/renderfarm.api")
    # Send the session cookie only over HTTPS (set it when the dashboard is behind TLS).
    secure_cookies: bool = False
    # A browser session ends after this long without a request.
    session_idle_s: float = 12 * 3600
    # Failed password checks (login page and HTTP Basic) allowed per source address and per
    # account name; beyond them 429 with Retry-After. Token checks never count.
    password_attempts_per_address: str = "10/minute"
    password_attempts_per_name: str = "5/minute"
    # Entries the audit stream keeps (trimmed approximately, oldest first).
    audit_max_entries: int = 100_000
    # Quotas per role (an account may override them): most queued jobs, most running jobs,
    # hardware classes its jobs may use.
    viewer_max_queued: int = 0
    viewer_max_running: int = 0
    viewer_hardware: tuple[Hardware, ...] = ()
    member_max_queued: int = 100
    member_max_running: int = 4
    member_hardware: tuple[Hardware, ...] = tuple(Hardware)
    operator_max_queued: int = 1000
    operator_max_running: int = 16
    operator_hardware: tuple[Hardware, ...] = tuple(Hardware)
    admin_max_queued: int = 1000
    admin_max_running: int = 16
    admin_hardware: tuple[Hardware, ...] = tuple(Hardware)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str) -> str:
        if is_sentinel_url(url):
            parse_sentinel_url(url)  # a ValueError names what is wrong; pydantic names the field
        return url

    @field_validator("redis_sentinel_master")
    @classmethod
    def _master_name(cls, name: str) -> str:
        if not name.strip():
            raise ValueError("must name the master the sentinels monitor (e.g. mymaster)")
        return name.strip()


# Timeouts turn a dead connection into an error instead of a wait without end, a health
# check before reusing an idle connection notices a restarted Redis, and a command that meets
# a lost connection is retried on a new one for a few seconds (redis-py's default for a URL
# client, given here so that a Sentinel client, which has none by default, gets the same).
def redis_options() -> dict[str, Any]:
    return {
        "socket_timeout": 30.0,
        "socket_connect_timeout": 5.0,
        "health_check_interval": 5,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=1.0), retries=10),
    }


def redis_client(settings: Settings) -> Redis:
    """The farm's Redis client: the one way every farm process gets one from its settings.

    For a `sentinel://` URL, a client of the current master of `redis_sentinel_master`: it
    asks the sentinels where the master is, and again after a failover.
    """
    if not isinstance(settings, Settings):
        raise TypeError("redis_client takes the farm's Settings (a sentinel URL needs more)")
    if is_sentinel_url(settings.redis_url):
        password = settings.redis_sentinel_password
        return master_client(
            parse_sentinel_url(settings.redis_url),
            settings.redis_sentinel_master,
            password.get_secret_value() if password else None,
            redis_options(),
        )
    return Redis.from_url(settings.redis_url, **redis_options())
