"""Who the tenants are and who may reach them: banks, API keys, the API's
authentication and bank scoping. Depends on no other app of the project;
`operations` and `banks` build on it."""
