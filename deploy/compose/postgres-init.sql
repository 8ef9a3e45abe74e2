-- One database per service, each owned by its own role: a service can reach only its own tables,
-- which is the rule of the design ("no service touches another's tables") enforced by PostgreSQL.
-- Run by the postgres image once, on an empty data volume. Passwords are for the local stack only.
CREATE ROLE shopmesh_user LOGIN PASSWORD 'shopmesh_user';
CREATE ROLE shopmesh_order LOGIN PASSWORD 'shopmesh_order';
CREATE ROLE shopmesh_payment LOGIN PASSWORD 'shopmesh_payment';
CREATE ROLE shopmesh_catalog LOGIN PASSWORD 'shopmesh_catalog';
CREATE ROLE shopmesh_inventory LOGIN PASSWORD 'shopmesh_inventory';
CREATE ROLE shopmesh_notification LOGIN PASSWORD 'shopmesh_notification';

-- As owners, the roles may create tables in their database's public schema (PostgreSQL 15 and
-- later grant that to the database owner only) and run the services' migrations.
CREATE DATABASE shopmesh_user OWNER shopmesh_user;
CREATE DATABASE shopmesh_order OWNER shopmesh_order;
CREATE DATABASE shopmesh_payment OWNER shopmesh_payment;
CREATE DATABASE shopmesh_catalog OWNER shopmesh_catalog;
CREATE DATABASE shopmesh_inventory OWNER shopmesh_inventory;
CREATE DATABASE shopmesh_notification OWNER shopmesh_notification;

-- Nobody else may connect to them (PUBLIC has CONNECT on new databases by default).
REVOKE CONNECT ON DATABASE shopmesh_user, shopmesh_order, shopmesh_payment, shopmesh_catalog,
  shopmesh_inventory, shopmesh_notification FROM PUBLIC;
GRANT CONNECT ON DATABASE shopmesh_user TO shopmesh_user;
GRANT CONNECT ON DATABASE shopmesh_order TO shopmesh_order;
GRANT CONNECT ON DATABASE shopmesh_payment TO shopmesh_payment;
GRANT CONNECT ON DATABASE shopmesh_catalog TO shopmesh_catalog;
GRANT CONNECT ON DATABASE shopmesh_inventory TO shopmesh_inventory;
GRANT CONNECT ON DATABASE shopmesh_notification TO shopmesh_notification;
