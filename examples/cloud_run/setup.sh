#!/usr/bin/env bash
# Everything the coordinator needs in a Google Cloud project, then the deploy itself:
#
#   PROJECT=my-project REGION=europe-west1 ./setup.sh
#
# Safe to run again: what exists is updated or left alone. Needs gcloud, logged in with
# rights to enable APIs, create service accounts and grant roles, and a Firestore
# database (native mode) in the project. README.md says what each variable means.
set -euo pipefail
cd "$(dirname "$0")"

: "${PROJECT:?set PROJECT to the Google Cloud project id}"
: "${REGION:?set REGION, e.g. europe-west1}"
SERVICE="${SERVICE:-prediction-coordinator}"
TOPIC="${TOPIC:-completions}"
SUBSCRIPTION="${SUBSCRIPTION:-${TOPIC}-push}"
DEAD_LETTER_TOPIC="${DEAD_LETTER_TOPIC:-${TOPIC}-dead}"
NEXT_STAGE_TOPIC="${NEXT_STAGE_TOPIC:-batches-complete}"
BATCH_COLLECTION="${BATCH_COLLECTION:-prediction_batches}"
COMPLETIONS_SUBCOLLECTION="${COMPLETIONS_SUBCOLLECTION:-completions}"
STAGE_MARKERS_COLLECTION="${STAGE_MARKERS_COLLECTION:-next_stage_markers}"
RUNTIME_SA_NAME="${RUNTIME_SA_NAME:-coordinator-run}"
PUSH_SA_NAME="${PUSH_SA_NAME:-coordinator-push}"
ENABLE_SUBCOLLECTION_COMPLETIONS="${ENABLE_SUBCOLLECTION_COMPLETIONS:-true}"
DUAL_WRITE_MODE="${DUAL_WRITE_MODE:-true}"
USE_SUBCOLLECTION_READS="${USE_SUBCOLLECTION_READS:-false}"
RETAIN_DAYS="${RETAIN_DAYS:-30}"
DOCUMENT_WRITE_RATE="${DOCUMENT_WRITE_RATE:-}" # empty: no fleet pacing (main.py, README)

# The numbers, from the code's defaults (tests/test_cloud_run_example.py checks them):
MAX_CONCURRENCY="${MAX_CONCURRENCY:-50}" # main.py MAX_CONCURRENCY = Cloud Run --concurrency
RECORD_TIMEOUT="${RECORD_TIMEOUT:-10}"   # record_completion's timeout in the endpoint (s)
CERTS_TIMEOUT=5                          # PushAuth.certs_timeout: one certificate fetch (s)
ACK_DEADLINE=$((RECORD_TIMEOUT + CERTS_TIMEOUT + 5)) # the answer's worst case + 5 s: 20 s
REQUEST_TIMEOUT="$ACK_DEADLINE"          # Pub/Sub redelivers anything slower anyway
MIN_RETRY_DELAY=10s                      # UnknownBatchPolicy.min_delay
MAX_RETRY_DELAY=600s                     # UnknownBatchPolicy.max_delay (Pub/Sub's maximum)
MAX_DELIVERY_ATTEMPTS="${MAX_DELIVERY_ATTEMPTS:-10}"
MAX_INSTANCES="${MAX_INSTANCES:-10}"
CPU="${CPU:-1}"
MEMORY="${MEMORY:-512Mi}"

export CLOUDSDK_CORE_PROJECT="$PROJECT" CLOUDSDK_CORE_DISABLE_PROMPTS=1

PROJECT_NUMBER="$(gcloud projects describe "$PROJECT" --format='value(projectNumber)')"
RUNTIME_SA="${RUNTIME_SA_NAME}@${PROJECT}.iam.gserviceaccount.com"
PUSH_SA="${PUSH_SA_NAME}@${PROJECT}.iam.gserviceaccount.com"
PUBSUB_AGENT="service-${PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com"
# The push token's audience: the service's deterministic URL, known before the first
# deploy, which Cloud Run's IAM check accepts and the endpoint checks again.
AUDIENCE="${AUDIENCE:-https://${SERVICE}-${PROJECT_NUMBER}.${REGION}.run.app}"
BATCH_GROUP="${BATCH_COLLECTION##*/}" # a nested collection path's last id is its group

exists() { "$@" >/dev/null 2>&1; }

echo "== APIs"
gcloud services enable run.googleapis.com cloudbuild.googleapis.com \
  artifactregistry.googleapis.com pubsub.googleapis.com firestore.googleapis.com

echo "== service accounts: the service's identity, and the push subscription's"
for name in "$RUNTIME_SA_NAME" "$PUSH_SA_NAME"; do
  if ! exists gcloud iam service-accounts describe "${name}@${PROJECT}.iam.gserviceaccount.com"; then
    gcloud iam service-accounts create "$name" --display-name="$SERVICE: $name"
  fi
done
gcloud projects add-iam-policy-binding "$PROJECT" --condition=None \
  --member="serviceAccount:${RUNTIME_SA}" --role=roles/datastore.user
# Pub/Sub mints the push OIDC tokens as the push account (needed by projects created
# before April 2021; harmless otherwise).
gcloud iam service-accounts add-iam-policy-binding "$PUSH_SA" \
  --member="serviceAccount:${PUBSUB_AGENT}" --role=roles/iam.serviceAccountTokenCreator

echo "== topics"
for topic in "$TOPIC" "$DEAD_LETTER_TOPIC" "$NEXT_STAGE_TOPIC"; do
  if ! exists gcloud pubsub topics describe "$topic"; then
    gcloud pubsub topics create "$topic"
  fi
done
# A topic keeps nothing without a subscription: this one holds the dead letters.
if ! exists gcloud pubsub subscriptions describe "${DEAD_LETTER_TOPIC}-sub"; then
  gcloud pubsub subscriptions create "${DEAD_LETTER_TOPIC}-sub" --topic="$DEAD_LETTER_TOPIC"
fi
gcloud pubsub topics add-iam-policy-binding "$NEXT_STAGE_TOPIC" \
  --member="serviceAccount:${RUNTIME_SA}" --role=roles/pubsub.publisher
gcloud pubsub topics add-iam-policy-binding "$DEAD_LETTER_TOPIC" \
  --member="serviceAccount:${PUBSUB_AGENT}" --role=roles/pubsub.publisher

echo "== Firestore: TTL on expire_at, and no index on what is never queried"
for group in "$BATCH_GROUP" "$COMPLETIONS_SUBCOLLECTION" roster "$STAGE_MARKERS_COLLECTION"; do
  gcloud firestore fields ttls update expire_at --collection-group="$group" --enable-ttl
done
exempt() { gcloud firestore indexes fields update "$2" --collection-group="$1" --disable-indexes; }
# The legacy array and map (an entry per player, on every write of the batch) and the
# other arrays and maps of ids; the timestamps every group write rewrites.
for field in completed_players predictions_by_player roster missing_players \
  open_writes closed_writes updated_at last_updated; do
  exempt "$BATCH_GROUP" "$field"
done
# Per completion: a server timestamp and the player id, both sequential within a batch.
for field in completed_at player_lookup write_id; do
  exempt "$COMPLETIONS_SUBCOLLECTION" "$field"
done
exempt roster players # a roster chunk: up to 10,000 ids in one array

echo "== Cloud Run: $SERVICE"
env_vars=(
  "GOOGLE_CLOUD_PROJECT=${PROJECT}"
  "BATCH_COLLECTION=${BATCH_COLLECTION}"
  "COMPLETIONS_SUBCOLLECTION=${COMPLETIONS_SUBCOLLECTION}"
  "ENABLE_SUBCOLLECTION_COMPLETIONS=${ENABLE_SUBCOLLECTION_COMPLETIONS}"
  "DUAL_WRITE_MODE=${DUAL_WRITE_MODE}"
  "USE_SUBCOLLECTION_READS=${USE_SUBCOLLECTION_READS}"
  "PUSH_AUTH=oidc"
  "PUSH_AUDIENCE=${AUDIENCE}"
  "PUSH_SERVICE_ACCOUNT=${PUSH_SA}"
  "MAX_CONCURRENCY=${MAX_CONCURRENCY}"
  "RECORD_TIMEOUT=${RECORD_TIMEOUT}"
  "NEXT_STAGE_TOPIC=${NEXT_STAGE_TOPIC}"
  "STAGE_MARKERS_COLLECTION=${STAGE_MARKERS_COLLECTION}"
  "RETAIN_DAYS=${RETAIN_DAYS}"
  "DOCUMENT_WRITE_RATE=${DOCUMENT_WRITE_RATE}"
)
gcloud run deploy "$SERVICE" \
  --source=. \
  --region="$REGION" \
  --service-account="$RUNTIME_SA" \
  --no-allow-unauthenticated \
  --concurrency="$MAX_CONCURRENCY" \
  --max-instances="$MAX_INSTANCES" \
  --timeout="$REQUEST_TIMEOUT" \
  --cpu="$CPU" \
  --memory="$MEMORY" \
  --no-cpu-throttling \
  --set-env-vars="$(IFS=,; echo "${env_vars[*]}")"
URL="$(gcloud run services describe "$SERVICE" --region="$REGION" --format='value(status.url)')"
gcloud run services add-iam-policy-binding "$SERVICE" --region="$REGION" \
  --member="serviceAccount:${PUSH_SA}" --role=roles/run.invoker

echo "== push subscription: $SUBSCRIPTION -> ${URL}/pubsub"
push_flags=(
  --push-endpoint="${URL}/pubsub"
  --push-auth-service-account="$PUSH_SA"
  --push-auth-token-audience="$AUDIENCE"
  --ack-deadline="$ACK_DEADLINE"
  --min-retry-delay="$MIN_RETRY_DELAY"
  --max-retry-delay="$MAX_RETRY_DELAY"
  --dead-letter-topic="$DEAD_LETTER_TOPIC"
  --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS"
)
if exists gcloud pubsub subscriptions describe "$SUBSCRIPTION"; then
  gcloud pubsub subscriptions update "$SUBSCRIPTION" "${push_flags[@]}"
else
  gcloud pubsub subscriptions create "$SUBSCRIPTION" --topic="$TOPIC" "${push_flags[@]}"
fi
# Dead-lettering: Pub/Sub's agent acknowledges on the source and publishes to the DLQ.
gcloud pubsub subscriptions add-iam-policy-binding "$SUBSCRIPTION" \
  --member="serviceAccount:${PUBSUB_AGENT}" --role=roles/pubsub.subscriber

echo "== done: workers publish to $TOPIC; finished batches go to $NEXT_STAGE_TOPIC"
