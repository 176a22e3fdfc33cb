"""The served platform over HTTP, as its users meet it: `runplatform`, Hindsight's
Python and TypeScript clients, `opsctl`, Flower and the consoles in Chromium.
`pytest tests/acceptance`."""
