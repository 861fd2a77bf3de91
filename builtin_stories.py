"""The built-in DEMO corpus: simple children's stories generated from a small grammar, offline.

Not TinyStories. It exists so the whole pipeline runs with no network and no files, and it is
reported as a demo corpus wherever the data source is shown.

Every story has a beginning (who, where, what they love), a problem (something lost, stuck, broken,
scary, shared, ...) and an ending (how it was solved, how everyone felt, sometimes what was learned).
The cast is fixed at the start of a story, so names and pronouns stay consistent to the end.

    generate_stories(n, seed=0) -> list[str]   n distinct stories, the same for the same (n, seed)
    iter_stories(seed=0)                       the endless stream they come from

One random.Random(seed) drives the stream, so generate_stories(400) is the first 400 of
generate_stories(20000): a corpus grows without changing the stories it already had.
"""

from __future__ import annotations

import random
from itertools import islice
from typing import Callable, Iterator

VERSION = 2  # bump whenever the stories for a given seed change; load_dataset.py rebuilds then

GIRLS = ("Lily", "Mia", "Emma", "Sara", "Anna", "Lucy", "Zoe", "Ella", "Amy", "Rose", "Kim", "Sue", "Ava",
         "Grace", "Nora", "Ruby", "Daisy", "Molly", "Jenny", "Maya", "Chloe", "Hannah", "Sophie", "Tina",
         "Olivia", "Ivy", "Bella", "Jane", "Lena", "Nina", "Kate", "Poppy")
BOYS = ("Tom", "Ben", "Sam", "Jack", "Tim", "Leo", "Finn", "Jake", "Noah", "Luke", "Adam", "Dan", "Joe",
        "Eli", "Owen", "Ryan", "Alex", "Peter", "Mark", "Timmy", "Bobby", "Billy", "Charlie", "Henry",
        "Oscar", "Jacob", "Toby", "Kevin", "Ned", "Hugo", "Milo", "Paul")
# (kind, names): pets and animal friends
ANIMALS = (("dog", ("Rex", "Buddy", "Spot", "Rocky", "Lucky", "Biscuit")),
           ("puppy", ("Bingo", "Patch", "Pepper", "Scout")),
           ("cat", ("Whiskers", "Mittens", "Tiger", "Snowball", "Luna", "Socks")),
           ("kitten", ("Fluffy", "Ginger", "Pumpkin")),
           ("bunny", ("Hoppy", "Coco", "Cotton", "Clover")),
           ("duck", ("Quack", "Puddles", "Waddles")),
           ("bird", ("Tweety", "Sunny", "Pip", "Kiwi")),
           ("frog", ("Hopper", "Freddy", "Lily Pad")),
           ("turtle", ("Shelly", "Speedy", "Tuck")))
ADULTS = (("mom", "Mom", "she"), ("dad", "Dad", "he"), ("grandma", "Grandma", "she"), ("grandpa", "Grandpa", "he"))
TRAITS = ("kind", "curious", "brave", "shy", "happy", "playful", "clever", "cheerful", "gentle", "busy", "silly",
          "friendly", "little", "sweet", "funny", "helpful")
COLORS = ("red", "blue", "yellow", "green", "pink", "purple", "orange", "shiny", "soft", "big", "little", "striped",
          "spotty", "bright", "old", "new", "white", "brown")
# (noun, what you do with it, tags): "light" things can blow away or get stuck up a tree, "hard" ones can break
OBJECTS = (("ball", "kick", "light"), ("kite", "fly", "light hard"), ("teddy bear", "hug", "light"),
           ("toy car", "race", "hard"), ("toy boat", "sail", "hard"), ("hat", "wear", "light"),
           ("doll", "hold", "light hard"), ("drum", "play", "hard"), ("balloon", "hold", "light"),
           ("scarf", "wear", "light"), ("toy train", "push", "hard"), ("robot", "wind up", "hard"),
           ("bucket", "fill", "hard"), ("ribbon", "wave", "light"), ("blanket", "hug", ""),
           ("wagon", "pull", "hard"), ("bike", "ride", "hard"), ("book", "read", ""),
           ("crown", "wear", "light hard"), ("whistle", "blow", "hard"), ("jump rope", "swing", ""),
           ("truck", "push", "hard"), ("puzzle", "build", ""), ("rocket", "launch", "light hard"),
           ("paper plane", "throw", "light"), ("frisbee", "throw", "light"))
# (place, what is there, what children do there: past tense, base form, where things hide there)
PLACES = (("the park", "tall trees and a big slide", "played on the swings", "play on the swings", "under a bench"),
          ("the beach", "blue water and soft sand", "built a sandcastle", "build sandcastles", "behind a big rock"),
          ("the forest", "tall trees and pretty flowers", "looked for pinecones", "look for pinecones", "under a log"),
          ("the garden", "red roses and green bushes", "watered the flowers", "water the flowers", "behind the bushes"),
          ("the farm", "cows, pigs and a big red barn", "fed the chickens", "feed the chickens", "in the hay"),
          ("the lake", "ducks and little fish", "threw stones into the water", "throw stones", "in the tall grass"),
          ("the hill", "green grass and a windy top", "rolled down the grass", "roll down the hill", "behind a tree"),
          ("the playground", "a sandbox and a merry-go-round", "went down the slide", "go down the slide",
           "in the sandbox"),
          ("the meadow", "yellow flowers and busy bees", "chased butterflies", "chase butterflies",
           "in the flowers"),
          ("the backyard", "a swing and a little pond", "jumped in the leaves", "jump in the leaves", "under the porch"),
          ("the river", "a wooden bridge and smooth stones", "looked at the fish", "watch the fish",
           "under the bridge"),
          ("the zoo", "lions, monkeys and a tall giraffe", "waved at the monkeys", "see the animals",
           "near the gate"),
          ("the snowy field", "white snow and a snowman", "made snow angels", "make snow angels",
           "in a pile of snow"),
          ("the market", "fruit, bread and flowers", "looked at the apples", "look at the fruit",
           "under a table"))
INSIDE_PLACES = ("the forest", "the garden", "the backyard", "the meadow", "the snowy field")  # "in", not "at"
OPENINGS = ("Once upon a time, there was a {trait} {kid} named {name}.",
            "Once upon a time, in a small town, there lived a {trait} {kid} named {name}.",
            "There was once a {trait} {kid} called {name}.",
            "{name} was a {trait} {kid} who lived in a little house with {his} {a_rel}.",
            "Once there was a {trait} little {kid}. {His} name was {name}.",
            "One day, a {trait} {kid} named {name} woke up very early.")
LOVES = ("{He} had {a_color} {obj} that {he} loved very much.",
         "{His} favorite toy was {a_color} {obj}.",
         "{He} loved to {obj_do} {his} {color} {obj} every day.",
         "{name} had {a_color} {obj}. {He} took it everywhere.",
         "{His} {a_rel} gave {him} {a_color} {obj} for {his} birthday, and {he} loved it.")
FRIENDS_ANIMAL = ("{name} had a pet {fkind} named {F}.",
                  "{His} best friend was a little {fkind} named {F}.",
                  "{name} lived with a {fkind} called {F}, who followed {him} everywhere.")
FRIENDS_KID = ("{name} had a best friend named {F}.",
               "{His} friend {F} lived next door.",
               "{name} liked to play with {his} friend {F}.")
GO = ("One {time}, {name} and {F} went to {place}.",
      "One {time}, {name} took {his} {obj} and went to {place} with {F}.",
      "On a {time_adj} day, {name} and {F} walked to {place}.",
      "One day, {name}'s {a_rel} said, \"Let's go to {place}!\" {name} and {F} were very happy.")
SIGHTS = ("{place_at_cap}, {name} saw {sights}.", "{place_cap} had {sights}.", "They saw {sights}.")
PLAY = ("They {act_past} and laughed.", "{name} and {F} {act_past} together.",
        "First, they {act_past}. It was so much fun!", "They liked to {act_base} more than anything.")
TIMES = ("morning", "afternoon", "sunny day", "windy day", "warm day", "cold morning", "Saturday", "summer day")
TIME_ADJ = ("sunny", "bright", "windy", "warm", "cool", "cloudy", "lovely")
FEEL_SAD = ("sad", "upset", "worried", "scared", "unhappy")
FEEL_GOOD = ("happy", "glad", "proud", "thankful", "excited")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _pronouns(prefix: str, he: str) -> dict:
    forms = {"he": ("he", "him", "his", "himself"), "she": ("she", "her", "her", "herself")}[he]
    d = {f"{prefix}he": forms[0], f"{prefix}him": forms[1], f"{prefix}his": forms[2], f"{prefix}himself": forms[3]}
    d.update({f"{prefix}He": _cap(forms[0]), f"{prefix}His": _cap(forms[2])})
    return d


# ----------------------------------------------------------------------------- problems
#
# Each problem gets the random source and the story's slots and returns (paragraphs, moral or None).
# Sentences are format strings over the slots; the slot names are made in _cast().


def _lost(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    p1 = [c(("After a while, {name} looked for {his} {obj}, but it was gone!",
             "When it was time to go home, {name} could not find {his} {obj}.",
             "Then {name} put down {his} {obj} to {act_base}. When {he} came back, it was not there.")),
          c(("\"Oh no! Where is my {obj}?\" {he} cried.", "\"My {obj} is lost!\" said {name}. \"I can't find it anywhere.\"",
             "{name} felt {sad}. \"I lost my {obj},\" {he} said.")),
          c(("{He} looked all over {place}.", "{He} looked high and low.",
             "{He} looked everywhere, but {he} could not see it."))]
    helper_animal = s["f_is_animal"]
    if helper_animal:
        p2 = [c(("Then {F} started to sniff the ground.", "{F} ran around in circles and then stopped.",
                 "Suddenly, {F} ran off {hide}.")),
              c(("{F} came back with the {color} {obj}!", "There was the {obj}, {hide}! {F} had found it.",
                 "{F} barked and barked until {name} came to look. The {obj} was {hide}!"))]
    else:
        p2 = [c(("\"Don't worry, I will help you,\" said {F}.", "{F} said, \"Let's look together.\"",
                 "{F} held {name}'s hand. \"We will find it,\" {fhe} said.")),
              c(("They looked {hide}, and there it was!", "{F} found the {obj} {hide}.",
                 "At last, {name} saw something {color} {hide}. It was {his} {obj}!"))]
    p2.append(c(("{name} hugged {his} {obj}. \"Thank you, {F}!\" {he} said.",
                 "{name} was so {good}. {He} gave {F} a big hug.",
                 "\"You are the best friend ever,\" {name} said to {F}.")))
    moral = c(("friends help each other", "it is good to ask for help", "good friends never give up",
                "{he} should keep {his} things close", None))
    return [" ".join(p1), " ".join(p2)], moral


def _stuck(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    p1 = [c(("Then a big wind came and took the {obj} up into a tree.", "{name} threw the {obj} up high. It got stuck in a tree!",
             "Suddenly, the {obj} flew up and landed on top of a tall tree.")),
          c(("\"My {obj}!\" {name} cried. \"It is stuck!\"", "\"Oh no,\" said {name}. \"How will I get it down?\"",
             "{name} looked up. The {obj} was very high. {He} felt {sad}.")),
          c(("{He} jumped and jumped, but {he} was too small.", "{He} tried to climb the tree, but it was too tall.",
             "{F} tried to help, but the tree was too big for them."))]
    p2 = c(([c(("Then {name}'s {a_rel} came. {aHe} was tall and strong.", "{name} had an idea. {He} ran to get {his} {a_rel}.")),
               c(("{A} reached up high and got the {obj} down.", "{A} climbed up a ladder and got the {obj}.")),
               c(("\"Here you go,\" {ahe} said, and gave {name} the {obj}.", "{A} smiled and gave the {obj} back."))],
              [c(("Just then, a kind farmer walked by with a long ladder.", "Then a tall man with a long stick came by.")),
               "{name} asked for help, and the man got the {obj} down.",
               c(("\"Thank you!\" said {name}.", "{name} said thank you again and again."))],
              ["{F} had an idea. \"Let's wait for the wind!\"",
               c(("Then the wind blew again, and the {obj} fell down softly.", "Soon a big wind came, and the {obj} fell down into the grass."))]))
    p2 = p2 + [c(("{name} smiled a big smile.", "{name} and {F} cheered and clapped.", "{name} felt {good}. {He} held the {obj} very tight."))]
    moral = c(("it is OK to ask for help when something is too hard", "there is always a way if you think",
               "being patient helps", None))
    return [" ".join(p1), " ".join(p2)], moral


def _broken(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    p1 = [c(("Then {name} dropped {his} {obj}, and it broke!", "Oops! {name} tripped, and {his} {obj} fell and broke.",
             "{F} played with the {obj} too hard, and it broke into two pieces.")),
          c(("{name} started to cry. \"My {obj} is broken!\"", "\"Oh no!\" said {name}. {He} was very {sad}.",
             "{name} sat down and looked at the pieces. {He} felt {sad}.")),
          c(("\"I am sorry,\" said {F}.", "{F} sat next to {name}. \"Don't be sad,\" {fhe} said.",
             "{F} did not know what to do."))]
    p2 = [c(("They took the {obj} home to {name}'s {a_rel}.", "{name}'s {a_rel} came to see what was wrong.",
             "Then {name} remembered that {his} {a_rel} could fix things.")),
          c(("\"Let's fix it together,\" said {A}. {aHe} got some glue.", "{A} used some tape and some glue.",
             "{A} smiled and said, \"We can fix it. Give it to me.\"")),
          c(("Soon the {obj} was as good as new!", "After a little while, the {obj} was fixed.",
             "The {obj} was not perfect, but it worked again.")),
          c(("{name} hugged {A}. \"Thank you!\" {he} said.", "{name} was so {good} that {he} danced around the room.",
             "{name} and {F} played with the {obj} all day."))]
    moral = c(("broken things can be fixed with a little help", "{he} should be careful with {his} toys",
               "it is OK to make mistakes", None))
    return [" ".join(p1), " ".join(p2)], moral


def _share(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    p1 = [c(("{F} wanted to play with the {obj} too.", "Then {F} saw the {obj} and wanted it.",
             "\"Can I play with your {obj}?\" asked {F}.")),
          c(("But {name} said, \"No! It is mine!\"", "{name} held the {obj} tight. \"No, it is my {obj},\" {he} said.",
             "{name} did not want to share. {He} turned away.")),
          c(("{F} felt {sad} and walked away.", "{F} looked very {sad}. {fHe} sat down alone.",
             "Now nobody was having fun."))]
    p2 = [c(("{name} looked at {F}. {He} did not feel good inside.", "Soon {name} felt bad. Playing alone was not fun.",
             "{name} remembered what {his} {a_rel} always said: \"Sharing is caring.\"")),
          c(("{He} walked over to {F}. \"I am sorry,\" {he} said. \"Do you want to play with my {obj}?\"",
             "\"We can take turns,\" said {name}, and gave {F} the {obj}.",
             "{name} said, \"Let's play together!\"")),
          c(("{F} smiled. They took turns and played all afternoon.", "{F} was so {good}. They laughed and played together.",
             "Playing together was much more fun than playing alone."))]
    moral = c(("sharing makes everyone happy", "it is more fun to play together", "being kind is the best way", None))
    return [" ".join(p1), " ".join(p2)], moral


def _scared(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    thing, verb, reveal = c((
        ("a big dark cave", "saw", "Inside the cave, there was only a sleepy little bat."),
        ("a loud noise in the bushes", "heard", "It was only a little kitten playing in the leaves!"),
        ("a big black dog", "saw", "The dog wagged its tail. It only wanted to play!"),
        ("a dark shadow behind a tree", "saw", "It was only the shadow of a branch, moving in the wind!"),
        ("a big buzzing bee", "saw", "The bee flew to a flower. It did not care about them at all."),
        ("thunder far away", "heard", "Soon the thunder stopped, and the sun came out again."),
        ("a strange sound, like \"Hoo, hoo!\"", "heard", "It was only an owl, sitting in a tree!")))
    s.update(thing=thing, reveal=reveal)
    p1 = [c(("Then {name} %s {thing}." % verb, "Suddenly, {name} %s {thing}." % verb)),
          c(("{name} was scared. {He} hid behind {F}.", "{name} stopped. {His} legs were shaking.",
             "\"I am scared,\" {name} said in a small voice.")),
          c(("\"I want to go home,\" {he} said.", "{He} wanted to run away.", "{He} held {his} {obj} very tight."))]
    p2 = [c(("\"Don't be scared,\" said {F}. \"I am here with you.\"", "{F} stayed close to {name}.",
             "{F} said, \"Let's be brave together.\"")),
          c(("They took a deep breath and looked again.", "{name} walked a little closer, very slowly.",
             "Together, they took one small step.")),
          "{reveal}",
          c(("{name} laughed. \"I was brave!\" {he} said.", "{name} felt very {good} and brave.",
             "{name} smiled at {F}. \"Thank you for helping me be brave.\""))]
    moral = c(("being brave is easier with a friend", "things are not always as scary as they look",
               "it is OK to be scared sometimes", None))
    return [" ".join(p1), " ".join(p2)], moral


def _help_animal(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    animal = c(("a little bird", "a small kitten", "a baby duck", "a tiny puppy", "a little squirrel", "a lost bunny"))
    s["animal"] = animal
    s["animal_n"] = animal.split()[-1]
    p1 = [c(("Then they saw {animal} {hide}.", "Suddenly, {name} heard a small sound {hide}. It was {animal}!",
             "{F} found {animal} {hide}.")),
          c(("The {animal_n} looked hurt and {sad}.", "The {animal_n} was all alone and could not find its mom.",
             "The {animal_n} was cold and hungry.")),
          c(("\"Poor little {animal_n},\" said {name}. \"We have to help it.\"",
             "\"What should we do?\" asked {F}. \"We must help,\" said {name}.",
             "{name} felt sorry for the {animal_n}."))]
    p2 = [c(("{name} picked it up very gently.", "They gave the {animal_n} some water and a little food.",
             "{name} put the {animal_n} in {his} {obj_soft} to keep it warm.")),
          c(("Then they looked for its mom.", "They took it to {name}'s {a_rel}, who knew just what to do.",
             "They waited and waited with the {animal_n}.")),
          c(("Soon the {animal_n}'s mom came, and the little one was safe!", "After a few days, the {animal_n} was well again.",
             "The {animal_n} was happy and warm.")),
          c(("{name} and {F} felt very {good}.", "\"We did it!\" said {name}. {He} was so {good}.",
             "{name} waved goodbye. \"Be safe, little {animal_n}!\""))]
    moral = c(("it is good to help those who need it", "being kind to animals is important", "small acts of kindness matter",
               None))
    return [" ".join(p1), " ".join(p2)], moral


def _rain(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    p1 = [c(("But then dark clouds came, and it started to rain.", "Suddenly, the sky turned gray. Big drops of rain began to fall.",
             "Then it began to rain very hard.")),
          c(("\"Oh no! Now we can't play!\" said {name}.", "{name} was {sad}. {He} wanted to {act_base} all day.",
             "They ran home, all wet. {name} looked out the window and frowned."))]
    p2 = [c(("{A} said, \"Let's play inside!\"", "{F} had an idea. \"Let's make a fort with blankets!\"",
             "{name}'s {a_rel} said, \"Rain is good for the flowers. Let's make something fun.\"")),
          c(("They built a big fort with pillows and blankets.", "They baked cookies and drew pictures.",
             "They made a little boat out of paper and sailed it in a puddle.")),
          c(("Soon the rain stopped, and there was a big rainbow in the sky!", "When the sun came out, they saw a rainbow.",
             "They had so much fun that they forgot all about the rain.")),
          c(("{name} laughed. \"Rainy days can be fun too!\"", "{name} and {F} were very {good}.",
             "It was the best day ever."))]
    moral = c(("you can have fun on any day", "a bad day can turn into a good day", None))
    return [" ".join(p1), " ".join(p2)], moral


def _hurt(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    p1 = [c(("{name} ran very fast. Then {he} tripped and fell down.", "{name} wanted to race {F}. But {he} fell and hurt {his} knee.",
             "{name} climbed up high, but {he} slipped and fell.")),
          c(("\"Ouch!\" {name} cried. {His} knee was red.", "{name} started to cry. It hurt a lot.",
             "{name} sat on the ground. {He} felt {sad}.")),
          c(("{F} ran to {him}. \"Are you OK?\"", "{F} stopped and came back to help.", "{F} held {his} hand."))]
    p2 = [c(("{name}'s {a_rel} came and put a bandage on {his} knee.", "{F} helped {name} walk home slowly.",
             "{A} gave {name} a big hug and a kiss on the knee.")),
          c(("\"You will be OK,\" said {A}. \"You are very brave.\"", "Soon {name} felt much better.",
             "The next day, {his} knee did not hurt anymore.")),
          c(("{name} smiled. \"Thank you for helping me,\" {he} said to {F}.", "{name} and {F} played again, but a little slower.",
             "{name} was {good} to have a friend like {F}."))]
    moral = c(("a good friend stops to help", "it is better to be careful", "everyone falls sometimes", None))
    return [" ".join(p1), " ".join(p2)], moral


def _honest(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    thing = c(("vase", "cup", "plate", "lamp", "jar of cookies", "flower pot"))
    s["thing"] = thing
    p1 = [c(("When they came home, {name} played with {his} {obj} in the house.", "Back at home, {name} ran around the kitchen.",
             "At home, {name} and {F} played a game in the living room.")),
          c(("Crash! {name} knocked over {A}'s {thing}, and it broke.", "Oops! The {thing} fell on the floor and broke.",
             "Suddenly, {name} bumped the table. The {thing} fell down and broke.")),
          c(("{name} was scared. {He} wanted to hide the pieces.", "{name} did not want {A} to know.",
             "\"Maybe I should hide it,\" {name} thought."))]
    p2 = [c(("But then {name} thought about it. Hiding was not right.", "But {F} said, \"We should tell the truth.\"",
             "{name} felt bad inside.")),
          c(("{name} went to {A} and said, \"I am sorry. I broke the {thing}.\"",
             "{name} walked to {his} {a_rel}. \"I broke your {thing},\" {he} said. \"I am sorry.\"")),
          c(("{A} gave {him} a hug. \"Thank you for telling me the truth,\" {ahe} said.",
             "{A} was not angry. \"Things can break. I am proud that you told me,\" {ahe} said.")),
          c(("They cleaned up the pieces together.", "Then they glued the {thing} together.",
             "{name} felt much better."))]
    moral = c(("it is always best to tell the truth", "being honest makes you feel good inside", None))
    return [" ".join(p1), " ".join(p2)], moral


def _new_friend(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    new = c(GIRLS + BOYS)
    while new in (s["name"], s["F"]):
        new = c(GIRLS + BOYS)
    s.update(_pronouns("n", "she" if new in GIRLS else "he"))
    s["N"] = new
    p1 = [c(("Then they saw a {nkid} sitting all alone.", "There was a new {nkid} at {place}. {nHis} name was {N}.",
             "A {nkid} named {N} was standing by the trees, looking {sad}.")),
          c(("{nHe} did not have anyone to play with.", "{nHe} looked at the other children, but {nhe} was too shy to talk.",
             "{N} was new in town and had no friends yet."))]
    p1[0] = p1[0].replace("{nkid}", "girl" if new in GIRLS else "boy")
    p2 = [c(("{name} walked over and said, \"Hi! I am {name}. Do you want to play with us?\"",
             "{name} smiled and said, \"Hello! Do you want to {act_base} with us?\"",
             "{name} gave {N} {his} {obj}. \"You can play with it,\" {he} said.")),
          c(("{N} smiled a big smile. \"Yes, please!\" {nhe} said.", "{N} was so {good}. \"Thank you!\" {nhe} said.")),
          c(("They played together all day. {N} was not alone anymore.", "{name}, {F} and {N} became the best of friends.",
             "Soon they were laughing and running together."))]
    moral = c(("a kind word can make a new friend", "it feels good to include others", None))
    return [" ".join(p1), " ".join(p2)], moral


def _lost_way(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    place, sights, act_past, act_base, hide = next(p for p in PLACES if p[0] == "the forest")
    s.update(place=place, place_cap=_cap(place), sights=sights, act_past=act_past, act_base=act_base, hide=hide)
    s["place_at_cap"] = "In the forest"
    p1 = [c(("They went deep into the forest to look for berries.", "They followed a pretty butterfly into the forest.",
             "{name} wanted to see what was behind the big trees, so they walked far into the forest.")),
          c(("Soon all the trees looked the same.", "After a while, they could not see the path anymore.",
             "When they turned around, they did not know where they were.")),
          c(("\"We are lost!\" said {name}. {He} felt {sad}.", "\"Which way is home?\" asked {F}. Nobody knew.",
             "{name} wanted to cry, but {he} tried to be brave."))]
    p2 = c((["Then {name} remembered what {his} {a_rel} said: \"If you get lost, follow the river.\"",
               "They found the river and walked along it until they saw {name}'s house."],
              ["Then {F} saw the big old tree they had passed before.",
               "From there, they found the path and followed it all the way home."],
              ["Then they heard a voice calling, \"{name}! {name}!\"", "It was {A}! {aHe} had come to find them."]))
    p2 = p2 + [
          c(("{A} gave them a big hug.", "{name} ran into {his} {a_rel}'s arms.", "They were home at last, safe and sound.")),
          c(("\"Next time, stay on the path,\" said {A} with a smile.", "{name} was so {good} to be home.",
             "That night, {name} had a warm dinner and went to bed early."))]
    moral = c(("{he} should always stay close to home", "it helps to stay calm when you are lost", None))
    return [" ".join(p1), " ".join(p2)], moral


def _bake(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    treat = c(("a cake", "cookies", "a pie", "muffins", "pancakes", "bread"))
    s["treat"] = treat
    p1 = [c(("When they came home, {name} wanted to make {treat} for {A}.", "Back at home, {name} and {F} decided to bake {treat}.",
             "Later, {name} had a big idea: to make {treat} as a surprise.")),
          c(("But the flour bag fell, and there was flour everywhere!", "{name} put in too much sugar, and the bowl fell on the floor.",
             "The eggs slipped and broke on the floor. What a mess!")),
          c(("\"Oh no!\" said {name}. \"The kitchen is a mess!\"", "{name} looked at the mess and felt {sad}.",
             "{F} looked at {name}, and they both were very quiet."))]
    p2 = [c(("Then {A} came in. {aHe} looked at the mess and started to laugh.", "{A} came into the kitchen and saw everything.")),
          c(("\"Let's clean up and try again together,\" {ahe} said.", "\"It's OK. Let me help you,\" said {A}.")),
          c(("They cleaned the floor and made {treat} again, very carefully.", "This time, they did it slowly, step by step.")),
          c(("The {treat_n} smelled so good! Everyone ate some and smiled.", "It was the best {treat_n} they ever had.",
             "{name} was so {good}. Baking with {A} was the best."))]
    s["treat_n"] = treat.split()[-1]
    moral = c(("when you make a mistake, you can try again", "things are better when we do them together", None))
    return [" ".join(p1), " ".join(p2)], moral


def _wish(r: random.Random, s: dict) -> tuple[list[str], str | None]:
    c = r.choice
    want = c(("a new {color} bike", "a big box of crayons", "a puppy of {his} own", "a shiny red wagon",
              "a book about stars", "a toy rocket"))
    s["want"] = want.format_map(s)
    p1 = [c(("{name} saw {want} in a shop window.", "{name} really wanted {want}.", "Every day, {name} dreamed about {want}.")),
          c(("\"Can I have it, please?\" {he} asked {A}.", "{He} asked {his} {a_rel} for it.")),
          c(("\"You can save your coins for it,\" said {A}.", "{A} said, \"If you help at home, you can earn it.\""))]
    p2 = [c(("So {name} helped every day. {He} fed the cat and watered the plants.",
             "So {name} put one coin in {his} jar every day.", "{name} worked hard. {He} cleaned {his} room and helped in the garden.")),
          c(("It took a long time, but {he} did not give up.", "Some days it was hard, but {name} kept going.")),
          c(("At last, {he} had enough! {He} got {want}.", "One day, the jar was full. {name} bought {want}!")),
          c(("{He} showed it to {F}, and they played with it all day.", "{name} felt very {good}, because {he} had worked for it."))]
    moral = c(("hard work pays off", "good things come to those who wait", None))
    return [" ".join(p1), " ".join(p2)], moral


PROBLEMS: tuple[Callable[[random.Random, dict], tuple[list[str], str | None]], ...] = (
    _lost, _stuck, _broken, _share, _scared, _help_animal, _rain, _hurt, _honest, _new_friend, _lost_way, _bake, _wish)

ENDINGS = ("From that day on, {name} and {F} were best friends.", "It was a very good day.",
           "That night, {name} went to bed with a big smile.", "{name} would never forget that day.",
           "And they all lived happily ever after.", "Everyone was tired and happy.",
           "{name} hugged {his} {obj} and closed {his} eyes. What a day!", None)
MORALS = ("{name} learned that {moral}.", "That day, {name} learned that {moral}.",
          "{A} said, \"Remember, {moral}.\"")


# ----------------------------------------------------------------------------- the story


def _cast(r: random.Random) -> dict:
    """The slots of one story: hero, friend, grown-up, place and object, fixed for the whole story."""
    c = r.choice
    girl = r.random() < 0.5
    name = c(GIRLS if girl else BOYS)
    s = {"name": name, "kid": "girl" if girl else "boy", "trait": c(TRAITS)}
    s.update(_pronouns("", "she" if girl else "he"))
    if r.random() < 0.45:
        kind, names = c(ANIMALS)
        friend, f_he = c(names), ("she" if r.random() < 0.5 else "he")
        s.update(fkind=kind, f_is_animal=True)
    else:
        fgirl = r.random() < 0.5
        friend, f_he = c(GIRLS if fgirl else BOYS), ("she" if fgirl else "he")
        s.update(fkind="friend", f_is_animal=False)
    while friend == name:
        friend = c(GIRLS + BOYS) if not s["f_is_animal"] else friend + " Junior"
        f_he = "she" if friend in GIRLS else "he"
    s["F"] = friend
    s.update(_pronouns("f", f_he))
    a_rel, a_name, a_he = c(ADULTS)
    s.update(a_rel=a_rel, A=a_name)
    s.update(_pronouns("a", a_he))
    obj, do, tags = c(OBJECTS)
    color = c(COLORS)
    s.update(obj=obj, obj_do=do, obj_tags=tags, color=color, a_color=("an " if color[0] in "aeiou" else "a ") + color, obj_soft=c(("hat", "scarf", "blanket", "basket", "hands")))
    place, sights, act_past, act_base, hide = c(PLACES)
    s.update(place=place, place_cap=_cap(place), sights=sights, act_past=act_past, act_base=act_base, hide=hide)
    s["place_at_cap"] = ("In " if place in INSIDE_PLACES else "At ") + place
    s.update(time=c(TIMES), time_adj=c(TIME_ADJ), sad=c(FEEL_SAD), good=c(FEEL_GOOD))
    return s


def make_story(r: random.Random) -> str:
    """One story from the random source r: beginning, problem, ending, as paragraphs joined by newlines."""
    c = r.choice
    s = _cast(r)
    intro = [c(OPENINGS), c(LOVES), c(FRIENDS_ANIMAL if s["f_is_animal"] else FRIENDS_KID)]
    go = [c(GO), c(SIGHTS), c(PLAY)]
    problem = c(PROBLEMS)
    while (problem is _stuck and "light" not in s["obj_tags"]) or (problem is _broken and "hard" not in s["obj_tags"]):
        problem = c(PROBLEMS)
    middle, moral = problem(r, s)  # may add slots (thing, animal, ...) and move the place
    end = [e for e in (c(ENDINGS),) if e]
    if moral is not None:
        s["moral"] = moral.format_map(s)
        end.append(c(MORALS))
    if not end:
        end.append("It was a very good day.")
    paragraphs = [" ".join(intro), " ".join(go), *middle, " ".join(end)]
    return "\n".join(paragraphs).format_map(s)


def iter_stories(seed: int = 0) -> Iterator[str]:
    """An endless stream of distinct stories, the same for the same seed."""
    r = random.Random(seed)
    seen: set[str] = set()
    while True:
        story = make_story(r)
        if story not in seen:
            seen.add(story)
            yield story


def generate_stories(n: int, seed: int = 0) -> list[str]:
    """n distinct stories, deterministic from seed; the first k of n are generate_stories(k, seed)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return list(islice(iter_stories(seed), n))
