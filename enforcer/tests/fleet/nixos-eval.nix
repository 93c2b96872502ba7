# Evaluates dist/nixos/isolate.nix without nixpkgs (which the tests do not fetch): a stand-in
# for the few `lib` functions and `pkgs` attributes the module uses, and a stand-in for the
# module system that fills each option from the value given or its default. It checks the
# option names (a value for an option the module does not declare is an error, as in NixOS)
# and what the module makes of them: the policy files, the services and the users. It does not
# check option types or merge definitions the way nixpkgs does.
#
#   nix-instantiate --eval --strict --json nixos-eval.nix --arg module ./isolate.nix
{ module, instances ? {
    # Every option given, different from its default where it can be.
    web = {
      user = "isolate-web";
      directory = "/srv/web";
      presets = [ "npm" ];
      networkIsolation = {
        allowedCIDRs = [ "10.0.0.0/8" "192.168.1.10/32:5432/tcp" ];
        allowedHosts = [ "api.example.com:443/tcp" ];
        listen = [ "127.0.0.1:8787/tcp" ];
        dns = [ "192.0.2.53" ];
        unixSockets = [ "/run/postgresql/.s.PGSQL.5432" ];
        logRate = "5/minute";
      };
      sandbox = {
        readWritePaths = [ "/srv/web" ];
        readOnlyPaths = [ "/usr" ];
        execPaths = [ "/usr/bin" ];
        landlockMinimumAbi = 2;
      };
      command = "/usr/bin/node server.js";
    };
    # Every option at its default, and the network left open.
    open = { networkIsolation.enable = false; };
  }
}:
let
  inherit (builtins) attrNames concatStringsSep filter isFunction listToAttrs mapAttrs;

  option = o: o // { _type = "option"; };
  isOption = o: builtins.isAttrs o && (o._type or null) == "option";
  anyType = { };

  lib = rec {
    mkOption = option;
    mkEnableOption = what: option { type = types.bool; default = false; description = what; };
    mkIf = condition: value: if condition then value else { };
    types = {
      bool = anyType;
      str = anyType;
      package = anyType;
      ints.between = _: _: anyType;
      enum = _: anyType;
      listOf = _: anyType;
      nullOr = _: anyType;
      either = _: _: anyType;
      attrsOf = t: { attrsOf = t; };
      submodule = m: { submodule = m; };
    };
    nameValuePair = name: value: { inherit name value; };
    mapAttrs' = f: set: listToAttrs (map (n: f n set.${n}) (attrNames set));
    mapAttrsToList = f: set: map (n: f n set.${n}) (attrNames set);
    filterAttrs = pred: set:
      listToAttrs (map (n: { name = n; value = set.${n}; }) (filter (n: pred n set.${n}) (attrNames set)));
    optionalAttrs = condition: set: if condition then set else { };
    inherit concatStringsSep;
  };

  pkgs = {
    # A generated file stands for its contents, so the test can read them back.
    formats.toml = { }: { generate = name: value: { generated = name; inherit value; }; };
    coreutils = "/stub/coreutils";
    nftables = "/stub/nftables";
  };

  # The module system, as far as this module needs it: options filled from `values`.
  fill = path: options: values:
    let
      unknown = filter (n: !(options ? ${n})) (attrNames values);
    in
    if unknown != [ ] then
      throw "${path}: the module has no option ${concatStringsSep ", " unknown}"
    else
      mapAttrs
        (n: o:
          let here = "${path}.${n}"; in
          if isOption o then
            typed here o.type
              (values.${n} or (o.default or (throw "${here} has no value and no default")))
          else
            fill here o (values.${n} or { }))
        options;
  typed = path: type: value:
    if type ? submodule then submodule path type.submodule path value
    else if type ? attrsOf && type.attrsOf ? submodule then
      mapAttrs (name: submodule "${path}.${name}" type.attrsOf.submodule name) value
    else value;
  submodule = path: m: name: values:
    let
      self = fill path (declared.options) values;
      declared = if isFunction m then m { inherit name lib; config = self; } else m;
    in
    self;

  evaluated = import module { inherit config lib pkgs; };
  config.services.isolate = fill "services.isolate" evaluated.options.services.isolate {
    enable = true;
    package = "/stub/isolate";
    metricsAddress = "0.0.0.0:9477";
    layers = [ "ebpf" ];
    inherit instances;
  };
  out = evaluated.config;
in
{
  # Each policy file: its path below /etc, its mode and what it holds.
  policies = mapAttrs (_: file: { inherit (file) mode; contents = file.source.value; })
    out.environment.etc;
  services = mapAttrs
    (_: service: service.serviceConfig // { inherit (service) wantedBy; })
    out.systemd.services;
  users = mapAttrs (_: user: { inherit (user) home group isSystemUser; }) out.users.users;
}
