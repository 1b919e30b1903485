# syntax=docker/dockerfile:1
# usage-proxy: the metering sidecar between Open WebUI and OpenRouter.
#   docker build -t usage-proxy .
#   docker run --env-file .env -p 8787:8787 -v usage-proxy-data:/data usage-proxy

# ---- build: all dependencies, compile TypeScript to dist/ -------------------------------------
FROM node:24-slim AS build
WORKDIR /app
# Dependencies first so this layer is cached until the lockfile changes. --ignore-scripts: the
# package's own `prepare` (tsc) needs the sources, which are not copied yet; no dependency has
# an install script (the postinstall that mends postgres.js matters to the runtime stage, below).
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/build.mjs ./scripts/
COPY src ./src
# The incremental build's state (dist/.tsbuildinfo) is for rebuilding, not for running.
RUN npm run build && rm -f dist/.tsbuildinfo

# ---- runtime: production dependencies, dist/ and the SQL migrations ---------------------------
FROM node:24-slim AS runtime
# tini as PID 1: forwards SIGTERM/SIGINT to node (graceful drain of streams and the ledger) and
# reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
ENV NODE_ENV=production DATA_DIR=/data PORT=8787
COPY package.json package-lock.json ./
# The embedded database (PGlite, an optional dependency of about 27 MB) is for trying usage-proxy
# out, so the image leaves it out and needs DATABASE_URL; `--build-arg EMBEDDED=1` keeps it.
ARG EMBEDDED=0
# --ignore-scripts skips package.json's postinstall, so its one step runs here: it mends postgres.js's
# connection on a cut socket (scripts/patch-postgres.mjs says what and why).
COPY scripts/patch-postgres.mjs ./scripts/
RUN npm ci --omit=dev $([ "$EMBEDDED" = 1 ] || echo --omit=optional) --ignore-scripts --no-audit --no-fund \
 && node scripts/patch-postgres.mjs \
 && npm cache clean --force
COPY --from=build /app/dist ./dist
# `usage-proxy statement|verify|export-db` on PATH (docker compose exec usage-proxy usage-proxy …):
# the bin of package.json, which npm links only on a global install.
RUN chmod 755 dist/cli.js && ln -s /app/dist/cli.js /usr/local/bin/usage-proxy
# dist/main.js reads its migrations from ../sql, i.e. /app/sql.
COPY sql ./sql
# dist/admin/page.js serves the /admin/ page from ../../web/admin, i.e. /app/web/admin.
COPY web ./web
# The local journal (and the embedded database of an EMBEDDED=1 image without DATABASE_URL) live under /data.
RUN mkdir -p /data && chown node:node /data
VOLUME /data
USER node
EXPOSE 8787
# No curl in the slim image: node's own fetch. /healthz answers as soon as the listener is up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.PORT || 8787) + '/healthz', { signal: AbortSignal.timeout(4000) }).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--"]
# The node flags of `npm start` (package.json): docs/operations.md, "Memory under many streams".
CMD ["node", "--max-semi-space-size=8", "dist/main.js"]
