"""The process-wide service container: every client is made once, on first use.

Lambda keeps one ``Services`` at module scope across warm invocations; the worker makes one in
its startup hook. Construction is cheap (no network) so cold starts only pay for what a request
actually touches.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING

from jetmail.config import Settings

# Each service's module is imported when the service is first used, so a handler's cold start pays only
# for what its requests touch (docs/PERFORMANCE.md, cold starts).
if TYPE_CHECKING:
    from jetmail.audience.contacts import ContactStore
    from jetmail.audience.segments import SegmentStore
    from jetmail.aws.sns import SnsVerifier
    from jetmail.campaigns.service import CampaignService
    from jetmail.campaigns.store import CampaignStore
    from jetmail.compliance.apikeys import ApiKeys
    from jetmail.compliance.audit import AuditLog
    from jetmail.compliance.gdpr import PrivacyService
    from jetmail.deliverability.feedback import FeedbackProcessor
    from jetmail.deliverability.ses_events import SesEventIntake
    from jetmail.deliverability.stops import StopFeed
    from jetmail.deliverability.suppressions import Pseudonymizer, SuppressionStore
    from jetmail.deliverability.tracking import Tracker
    from jetmail.messaging.compose import Composer
    from jetmail.messaging.messages import MessageService
    from jetmail.messaging.sequences import SequenceService
    from jetmail.messaging.simulator import Simulator
    from jetmail.messaging.templates import TemplateStore
    from jetmail.messaging.tokens import Signer
    from jetmail.queue import QueueConfig, SyncClient
    from jetmail.reporting.counters import Counters
    from jetmail.reporting.reports import Reports
    from jetmail.storage.table import Table
    from jetmail.webhooks.deliveries import DeliveryLog
    from jetmail.webhooks.emitter import Emitter
    from jetmail.webhooks.endpoints import EndpointCache, EndpointStore
    from jetmail.webhooks.service import WebhookService


# every queue jetmail's jobs go to: `jetmail init` makes their consumers, the scheduler publishes their lag
# (jetmail/QueueLag), `jetmail sending status` shows their backlog, and the worker image consumes them all
QUEUES = ("email_transactional", "email_campaign", "email_ab_test", "email_maintenance", "webhooks")


def queue_config(settings: Settings) -> QueueConfig:
    from jetmail.queue import QueueConfig

    return QueueConfig(
        nats_url=settings.nats_url,
        creds_file=settings.nats_creds_file,
        user=settings.nats_user,
        password=settings.nats_password.get_secret_value() if settings.nats_password else None,
        tls_ca_file=settings.nats_tls_ca_file,
        tls_ca_pem=settings.nats_tls_ca_pem,
        stream=settings.jobs_stream,
        dlq_stream=settings.dlq_stream,
        replicas=settings.stream_replicas,
        duplicate_window=settings.duplicate_window_s,
    )


class Services:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def table(self) -> Table:
        from jetmail.storage.table import Table

        return Table(self.settings)

    @cached_property
    def stats_table(self) -> Table:
        """Events and engagement counters: kept apart so their transactions stay small."""
        from jetmail.storage.table import Table

        return Table(self.settings, name=self.settings.stats_table)

    @cached_property
    def api_keys(self) -> ApiKeys:
        from jetmail.compliance.apikeys import ApiKeys

        return ApiKeys(self.table, cache_s=self.settings.api_key_cache_s)

    @cached_property
    def templates(self) -> TemplateStore:
        from jetmail.messaging.templates import AuditedTemplateStore

        return AuditedTemplateStore(self.table, audit=self.audit, default_locale=self.settings.default_locale,
                                    head_ttl_s=self.settings.template_cache_s, limits=self.settings.render_limits)

    @cached_property
    def audit(self) -> AuditLog:
        from jetmail.compliance.audit import AuditLog

        return AuditLog(self.table, retention_days=self.settings.audit_retention_days)

    @cached_property
    def pseudonyms(self) -> Pseudonymizer:
        from jetmail.deliverability.suppressions import Pseudonymizer

        secret = self.settings.erasure_secret or self.settings.signing_secret
        return Pseudonymizer(secret.get_secret_value())

    @cached_property
    def privacy(self) -> PrivacyService:
        from jetmail.compliance.gdpr import PrivacyService

        return PrivacyService(contacts=self.contacts, messages=self.messages.messages, sequences=self.sequences,
                              events=self.feedback.events, soft_bounces=self.feedback.soft_bounces,
                              suppressions=self.suppressions, feedback=self.feedback, audit=self.audit)

    @cached_property
    def queue(self) -> SyncClient:
        from jetmail.queue import SyncClient

        return SyncClient.shared(queue_config(self.settings))

    @cached_property
    def messages(self) -> MessageService:
        from jetmail.deliverability.policy import SuppressionPolicy
        from jetmail.messaging.messages import MessageRepository, MessageService
        from jetmail.messaging.submission import BlockingRawStore

        # suppressed recipients are refused when a message is accepted; the worker checks the stop events since
        service = MessageService(table=self.table, templates=self.templates, queue=self.queue,
                              repository=MessageRepository(self.table,
                                                           retention_days=self.settings.message_retention_days),
                              composer=self.composer, policy=SuppressionPolicy(store=self.suppressions),
                              blobs=BlockingRawStore(self.queue, ttl_s=self.settings.submission_retention_hours * 3600,
                                                     replicas=self.settings.stream_replicas),
                              max_attachment_bytes=self.settings.max_attachment_bytes,
                              blob_ttl_s=self.settings.submission_retention_hours * 3600)
        service.webhooks = self.webhooks  # its ``message.queued`` events
        return service

    @cached_property
    def sequences(self) -> SequenceService:
        from jetmail.messaging.sequences import SequenceService

        return SequenceService(table=self.table, messages=self.messages,
                               horizon=timedelta(days=self.settings.sequence_max_days))

    @cached_property
    def composer(self) -> Composer:
        from jetmail.messaging.compose import Composer
        from jetmail.messaging.templating import Renderer

        # templates extend layouts kept in the template store
        renderer = Renderer(limits=self.settings.render_limits, layouts=self.templates.layout)
        return Composer(self.settings, signer=self.signer, renderer=renderer)

    @cached_property
    def suppressions(self) -> SuppressionStore:
        from jetmail.deliverability.suppressions import SuppressionStore

        return SuppressionStore(self.table, pseudonyms=self.pseudonyms, audit=self.audit, stops=self.stop_feed,
                                webhooks=self.webhooks)

    @cached_property
    def stop_feed(self) -> StopFeed:
        """Publishes every suppression, list unsubscribe and erasure for running campaigns
        (jetmail.deliverability.stops)."""
        from jetmail.deliverability.stops import StopFeed

        return StopFeed(self.queue, pseudonyms=self.pseudonyms)

    @cached_property
    def contacts(self) -> ContactStore:
        from jetmail.audience.contacts import ContactStore

        return ContactStore(self.table, erased=self.suppressions.erased_among, stops=self.stop_feed)

    @cached_property
    def segments(self) -> SegmentStore:
        from jetmail.audience.segments import SegmentStore

        return SegmentStore(self.table, contacts=self.contacts)

    @cached_property
    def feedback(self) -> FeedbackProcessor:
        from jetmail.deliverability.feedback import FeedbackProcessor, Policy

        return FeedbackProcessor(table=self.table, stats=self.stats_table, messages=self.messages.messages,
                                 suppressions=self.suppressions,
                                 sequences=self.sequences, contacts=self.contacts, queue=self.queue,
                                 webhooks=self.webhooks,
                                 policy=Policy(soft_bounce_limit=self.settings.soft_bounce_limit,
                                               soft_bounce_window_days=self.settings.soft_bounce_window_days,
                                               event_retention_days=self.settings.event_retention_days))

    @cached_property
    def simulator(self) -> Simulator:
        from jetmail.messaging.simulator import Simulator

        return Simulator(self.settings, feedback=self.feedback)

    @cached_property
    def tracker(self) -> Tracker:
        from jetmail.deliverability.tracking import Tracker

        return Tracker(signer=self.signer, feedback=self.feedback)

    @cached_property
    def campaign_store(self) -> CampaignStore:
        from jetmail.campaigns.store import CampaignStore

        return CampaignStore(self.table, stats=self.stats_table, retention_days=self.settings.message_retention_days)

    @cached_property
    def campaigns(self) -> CampaignService:
        from jetmail.campaigns.service import CampaignService

        return CampaignService(store=self.campaign_store, templates=self.templates, queue=self.queue,
                               lists=self.contacts, segments=self.segments, sender_rules=self.composer,
                               audit=self.audit, suppressions=self.suppressions, webhooks=self.webhooks)

    @cached_property
    def reports(self) -> Reports:
        from jetmail.reporting.reports import Reports

        return Reports(store=self.campaign_store, counters=self.counters)

    @cached_property
    def counters(self) -> Counters:
        """The stats table's counters: what reports and the reputation monitor read."""
        from jetmail.reporting.counters import Counters

        return Counters(self.stats_table)

    @cached_property
    def signer(self) -> Signer:
        from jetmail.messaging.tokens import Signer

        return Signer(self.settings.signing_secret)

    @cached_property
    def sns_verifier(self) -> SnsVerifier:
        from jetmail.aws.sns import SnsVerifier

        return SnsVerifier.from_settings(self.settings)

    @cached_property
    def ses_events(self) -> SesEventIntake:
        from jetmail.aws.sns import confirm_subscription
        from jetmail.deliverability.ses_events import SesEventIntake

        settings = self.settings
        return SesEventIntake(feedback=self.feedback, verifier=self.sns_verifier,
                              confirm=lambda message: confirm_subscription(settings, message))

    # ---- outgoing webhooks
    @cached_property
    def webhook_endpoints(self) -> EndpointStore:
        from jetmail.webhooks.endpoints import EndpointStore

        return EndpointStore(self.table)

    @cached_property
    def webhook_cache(self) -> EndpointCache:
        """The endpoint list, re-read at most every ``webhook_cache_s``: what emitting checks."""
        from jetmail.webhooks.endpoints import EndpointCache

        return EndpointCache(self.webhook_endpoints, ttl_s=self.settings.webhook_cache_s)

    @cached_property
    def webhook_log(self) -> DeliveryLog:
        from jetmail.webhooks.deliveries import DeliveryLog

        return DeliveryLog(self.table, retention_days=self.settings.webhook_log_retention_days)

    @cached_property
    def webhooks(self) -> Emitter:
        """The one emitter every event source of this process calls (``jetmail.webhooks.emitter``)."""
        from jetmail.webhooks.emitter import Emitter

        return Emitter(endpoints=self.webhook_cache, queue=self.queue)

    @cached_property
    def webhook_service(self) -> WebhookService:
        from jetmail.webhooks.service import WebhookService

        return WebhookService(store=self.webhook_endpoints, log=self.webhook_log, queue=self.queue)
